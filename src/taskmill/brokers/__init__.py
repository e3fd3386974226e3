"""Brokers: one module per backend behind the interface in ``base``; ``open_broker`` picks by URL."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from taskmill.brokers.base import Broker, DeadLetter, Delivery, Failure, QueueStats, Record
from taskmill.errors import ConfigurationError

__all__ = ["Broker", "DeadLetter", "Delivery", "Failure", "QueueStats", "Record", "open_broker"]

# scheme -> "module:Class"; modules are imported only when their scheme is used.
_BACKENDS = {
    "memory": "taskmill.brokers.memory:MemoryBroker",
    "sqlite": "taskmill.brokers.sqlite:SQLiteBroker",
}


def open_broker(url: str, **settings: Any) -> Broker:
    """Build the broker a URL names, e.g. ``sqlite:///taskmill.db`` or ``memory://``."""
    scheme = urlsplit(url).scheme
    target = _BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(_BACKENDS))
        raise ConfigurationError(f"unsupported broker URL {url!r}; supported schemes: {known}")
    module_name, class_name = target.split(":")
    broker_class: type[Broker] = getattr(importlib.import_module(module_name), class_name)
    return broker_class(url, **settings)
