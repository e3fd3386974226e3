"""Brokers: one module per backend behind the interface in ``base``; ``open_broker`` picks by URL."""

from __future__ import annotations

from typing import Any

from taskmill.backends import backend_class
from taskmill.brokers.base import Broker, DeadLetter, Delivery, Failure, QueueStats, Record

__all__ = ["Broker", "DeadLetter", "Delivery", "Failure", "QueueStats", "Record", "open_broker"]

# scheme -> "module:Class"; modules are imported only when their scheme is used.
_BACKENDS = {
    "amqp": "taskmill.brokers.rabbitmq:RabbitMQBroker",
    "amqps": "taskmill.brokers.rabbitmq:RabbitMQBroker",
    "memory": "taskmill.brokers.memory:MemoryBroker",
    "postgres": "taskmill.brokers.postgres:PostgresBroker",
    "postgresql": "taskmill.brokers.postgres:PostgresBroker",
    "redis": "taskmill.brokers.redis:RedisBroker",
    "rediss": "taskmill.brokers.redis:RedisBroker",
    "sqlite": "taskmill.brokers.sqlite:SQLiteBroker",
}


def open_broker(url: str, **settings: Any) -> Broker:
    """Build the broker a URL names, e.g. ``sqlite:///taskmill.db`` or ``memory://``."""
    broker_class: type[Broker] = backend_class(_BACKENDS, url, "broker")
    return broker_class(url, **settings)
