"""group([...]): run members in parallel; ``on_complete``/``on_failure`` fire once when the last
member finished, from an idempotent set in the result store (no polling, no worker waiting)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskmill.errors import ConfigurationError, ResultMissing, ResultTimeout
from taskmill.message import Message, new_message_id
from taskmill.results.base import FOREVER
from taskmill.results.records import read_record, result_key
from taskmill.workflows.pipeline import Pipeline

if TYPE_CHECKING:
    from taskmill.app import App

__all__ = ["Group", "group"]


class Group:
    """Messages or pipelines that run in parallel, with completion callbacks."""

    def __init__(
        self,
        members: Iterable[Message | Pipeline],
        *,
        on_complete: Message | None = None,
        on_failure: Message | None = None,
        group_id: str | None = None,
    ) -> None:
        self.members = [m if isinstance(m, Pipeline) else Pipeline([m]) for m in members]
        if not self.members:
            raise ConfigurationError("a group needs at least one member")
        self.on_complete = on_complete
        self.on_failure = on_failure
        self.id = group_id or new_message_id()

    def __len__(self) -> int:
        return len(self.members)

    @property
    def app(self) -> App:
        """The App of the first member."""
        return self.members[0].app

    @property
    def member_ids(self) -> list[str]:
        """Each member's result id, in order."""
        return [member.id for member in self.members]

    def run(self) -> Group:
        """Enqueue every member in one broker call."""
        info: dict[str, Any] = {"id": self.id, "size": len(self.members)}
        for key, callback in (("on_complete", self.on_complete), ("on_failure", self.on_failure)):
            if callback is not None:
                info[key] = callback.to_envelope()
        self.app.enqueue([member.first_message({"group": info}) for member in self.members])
        return self

    def wait(self, timeout: float | None = None) -> None:
        """Block until every member finished (None: no limit; 0: no wait); ResultTimeout if they did not."""
        deadline = time.monotonic() + (FOREVER if timeout is None else timeout)
        store = self.app.store
        for member_id in self.member_ids:
            remaining = deadline - time.monotonic()
            found = store.get(result_key(member_id)) if remaining <= 0 else store.wait(result_key(member_id), remaining)
            if found is None:
                raise ResultTimeout(f"group {self.id} did not finish within {timeout} s")

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every member's result in order (waiting as ``wait`` does); TaskFailed for a failed member."""
        self.wait(timeout)
        values = []
        for member_id in self.member_ids:
            data = self.app.store.get(result_key(member_id))
            if data is None:
                raise ResultMissing(f"the result of group member {member_id} expired")
            values.append(read_record(member_id, data))
        return values


def group(
    members: Iterable[Message | Pipeline], *, on_complete: Message | None = None, on_failure: Message | None = None
) -> Group:
    """A group of messages and pipelines; see Group."""
    return Group(members, on_complete=on_complete, on_failure=on_failure)
