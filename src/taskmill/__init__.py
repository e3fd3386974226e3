"""taskmill: background tasks for Python that are simple, fast and never lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from taskmill.actor import Actor
from taskmill.app import App, Settings
from taskmill.errors import (
    ActorNotFound,
    ArgumentsError,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    DecodeError,
    EncodeError,
    InvalidOptionError,
    LeaseLost,
    MessageError,
    PayloadTooLarge,
    ResultError,
    ResultMissing,
    ResultTimeout,
    Retry,
    TaskFailed,
    TaskmillError,
    TimeLimitExceeded,
    UnknownOptionError,
)
from taskmill.message import Message
from taskmill.middleware import Middleware
from taskmill.options import ActorOptions
from taskmill.worker import Worker
from taskmill.workflows import Group, Pipeline, group, pipeline

__version__ = "0.1.0"

__all__ = [
    "Actor",
    "ActorNotFound",
    "ActorOptions",
    "App",
    "ArgumentsError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DecodeError",
    "EncodeError",
    "Group",
    "InvalidOptionError",
    "LeaseLost",
    "Message",
    "MessageError",
    "Middleware",
    "PayloadTooLarge",
    "Pipeline",
    "ResultError",
    "ResultMissing",
    "ResultTimeout",
    "Retry",
    "Settings",
    "TaskFailed",
    "TaskmillError",
    "TimeLimitExceeded",
    "UnknownOptionError",
    "Worker",
    "__version__",
    "actor",
    "default_app",
    "group",
    "pipeline",
]

logging.getLogger("taskmill").addHandler(logging.NullHandler())

P = ParamSpec("P")
R = TypeVar("R")
_default: App | None = None
_default_lock = threading.Lock()


def default_app() -> App:
    """The App that module-level ``taskmill.actor`` registers on, configured from the environment."""
    global _default  # noqa: PLW0603 -- one lazily built process-wide default, like logging's root
    with _default_lock:
        if _default is None:
            _default = App()
        return _default


@overload
def actor(fn: Callable[P, R], /) -> Actor[P, R]: ...
@overload
def actor(
    fn: None = None, /, *, name: str | None = None, **options: Any
) -> Callable[[Callable[P, R]], Actor[P, R]]: ...
def actor(
    fn: Callable[P, R] | None = None, /, *, name: str | None = None, **options: Any
) -> Actor[P, R] | Callable[[Callable[P, R]], Actor[P, R]]:
    """``@taskmill.actor``: the App decorator bound to ``default_app()``."""
    if fn is not None:
        return default_app().actor(fn)
    return default_app().actor(name=name, **options)
