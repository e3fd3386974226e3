"""Actor[P, R]: a function that can also be sent as a message, type-checked against its signature."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from taskmill.errors import ArgumentsError, InvalidOptionError
from taskmill.message import Message
from taskmill.options import ActorOptions, check_message_id, check_priority, check_queue, delay_ms

if TYPE_CHECKING:
    from taskmill.app import App

__all__ = ["Actor"]

P = ParamSpec("P")
R = TypeVar("R")


class Actor(Generic[P, R]):
    """A registered function. Call it to run inline; ``send`` it to run on a worker."""

    def __init__(self, fn: Callable[P, R], *, app: App, name: str, options: ActorOptions) -> None:
        self.fn = fn
        self.app = app
        self.name = name
        self.options = options
        self.signature = inspect.signature(fn)
        self._positional = _positional_range(self.signature)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.logger = logging.getLogger(f"taskmill.actors.{name}")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"Actor({self.name!r}, queue={self.options.queue!r})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as a plain call."""
        return self.fn(*args, **kwargs)

    def message(self, *args: Any, **kwargs: Any) -> Message:
        """A message for this actor with the actor's default options, not yet sent.

        Arguments may be partial (a pipeline step receives the previous result as its last one);
        ``send`` checks them in full.
        """
        return self.message_with_options(args=args, kwargs=kwargs)

    def message_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        message_id: str | None = None,
        on_success: Actor[Any, Any] | str | None = None,
        on_failure: Actor[Any, Any] | str | None = None,
        pipe_ignore: bool = False,
    ) -> Message:
        """A message with per-message options; arguments are checked against the signature.

        ``on_success``/``on_failure`` name an actor to enqueue with the result or an error
        description; ``pipe_ignore`` makes a pipeline step ignore the previous step's result.
        """
        if type(args) is not tuple:
            if not isinstance(args, tuple | list):
                raise ArgumentsError(f"{self.name}: args must be a tuple and kwargs a mapping")
            args = tuple(args)
        if kwargs is None:
            kwargs = {}
        elif isinstance(kwargs, Mapping):
            kwargs = dict(kwargs)
        else:
            raise ArgumentsError(f"{self.name}: args must be a tuple and kwargs a mapping")
        self.check_arguments(args, kwargs, partial=True)
        if priority is not None:
            check_priority(priority)
        if queue is not None:
            check_queue(queue)
        extra: dict[str, Any] = {}
        if message_id is not None:
            check_message_id(message_id)
            extra["id"] = message_id
        options: dict[str, Any] = {}
        for key, callback in (("on_success", on_success), ("on_failure", on_failure)):
            if callback is not None:
                name = callback.name if isinstance(callback, Actor) else callback
                if not isinstance(name, str) or not name:
                    raise InvalidOptionError(f"{key} must be an actor or an actor's name, not {callback!r}")
                options[key] = name
        if pipe_ignore:
            options["pipe_ignore"] = True
        return Message(
            app=self.app,
            options=options,
            actor=self.name,
            args=args,
            kwargs=kwargs,
            queue=queue or self.options.queue,
            priority=self.options.priority if priority is None else priority,
            delay_ms=0 if delay is None and eta is None else delay_ms(delay, eta),
            **extra,
        )

    def binds(self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> bool:
        """Whether the arguments bind to the signature in full (the common all-positional call checked fast)."""
        if not kwargs and self._positional is not None:
            return self._positional[0] <= len(args) <= self._positional[1]
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError:
            return False
        return True

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, partial: bool = False) -> None:
        """Raise ArgumentsError unless the arguments bind to the signature (``partial``: so far)."""
        fits = self._positional  # (required, allowed) positional counts, when that decides alone
        if not kwargs and fits is not None and (partial or fits[0] <= len(args)) and len(args) <= fits[1]:
            return
        try:
            (self.signature.bind_partial if partial else self.signature.bind)(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(f"{self.name}: {exc}") from None

    def send(self, *args: P.args, **kwargs: P.kwargs) -> Message:
        """Enqueue a call of this actor; returns the sent Message."""
        return self.app.enqueue([self.message_with_options(args=args, kwargs=kwargs)])[0]

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        delay: float | dt.timedelta | None = None,
        eta: dt.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        message_id: str | None = None,
        on_success: Actor[Any, Any] | str | None = None,
        on_failure: Actor[Any, Any] | str | None = None,
    ) -> Message:
        """Enqueue with per-message options: delay (s or timedelta) or eta, priority 0-9, queue, id, callbacks."""
        message = self.message_with_options(
            args=args,
            kwargs=kwargs,
            delay=delay,
            eta=eta,
            priority=priority,
            queue=queue,
            message_id=message_id,
            on_success=on_success,
            on_failure=on_failure,
        )
        return self.app.enqueue([message])[0]


def _positional_range(signature: inspect.Signature) -> tuple[int, float] | None:
    """(required, allowed) counts of positional arguments when a call without keywords binds exactly
    when its count is in that range; None when the signature needs the full check (keyword-only
    parameters without defaults)."""
    required, allowed = 0, 0.0
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            allowed += 1
            if parameter.default is parameter.empty:
                required = int(allowed)
        elif parameter.kind is parameter.VAR_POSITIONAL:
            allowed = math.inf
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return None
    return required, allowed
