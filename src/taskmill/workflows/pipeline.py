"""pipeline([a.message(1), b.message(), c.message()]): each step's result is appended to the next
step's arguments (unless that step was made with ``pipe_ignore=True``).

The steps travel inside the first message's options, so no worker waits and nothing polls: when
a step succeeds, the worker enqueues the next one. Every step carries the id of the last one, under
which the pipeline's result (or the failure that stopped it) is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from taskmill.errors import ConfigurationError
from taskmill.message import Message

if TYPE_CHECKING:
    from taskmill.app import App

__all__ = ["Pipeline", "pipeline"]


class Pipeline:
    """Messages run one after another, each receiving the previous one's result."""

    def __init__(self, steps: Iterable[Message | Pipeline]) -> None:
        self.steps: list[Message] = []
        for step in steps:
            self.steps.extend(step.steps if isinstance(step, Pipeline) else [step])
        if not self.steps:
            raise ConfigurationError("a pipeline needs at least one message")

    def __or__(self, other: Message | Pipeline) -> Pipeline:
        return Pipeline([*self.steps, other])

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def app(self) -> App:
        """The App of the first step (the one that will send it)."""
        app: App | None = self.steps[0].app
        if app is None:
            raise ConfigurationError("build pipeline steps with actor.message(...), which binds them to an App")
        return app

    @property
    def id(self) -> str:
        """The pipeline's result id: the last step's message id."""
        return self.steps[-1].id

    def first_message(self, extra: Mapping[str, Any] | None = None) -> Message:
        """The first step, carrying the rest; ``extra`` options go on every step (groups use it)."""
        shared = {"pipeline_result": self.id, **(extra or {})}
        linked = [
            dataclasses.replace(step, options={**step.options, **shared, "store_result": step is self.steps[-1]})
            for step in self.steps
        ]
        rest = [step.to_envelope() for step in linked[1:]]
        first = linked[0]
        return dataclasses.replace(first, options={**first.options, "pipe": rest}) if rest else first

    def run(self) -> Pipeline:
        """Enqueue the first step; returns the pipeline, whose ``result()`` is the last step's."""
        self.app.enqueue([self.first_message()])
        return self

    def result(self, timeout: float | None = None) -> Any:
        """The last step's return value, or TaskFailed for the step that stopped the pipeline."""
        return self.app.get_result(self.id, timeout)


def pipeline(steps: Iterable[Message | Pipeline]) -> Pipeline:
    """A pipeline of messages (and pipelines, flattened)."""
    return Pipeline(steps)


def next_step(message: Message, result: Any) -> Message | None:
    """The step after ``message`` with ``result`` appended to its arguments, or None at the end."""
    rest = message.options.get("pipe")
    if not rest:
        return None
    step = Message.from_envelope(rest[0])
    args = step.args if step.options.get("pipe_ignore") else (*step.args, result)
    options = {**step.options, "pipe": rest[1:]} if len(rest) > 1 else dict(step.options)
    return dataclasses.replace(step, args=args, options=options, app=message.app)
