"""Result stores: one module per backend behind the interface in ``base``; ``open_store`` picks by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from taskmill.backends import backend_class
from taskmill.results.base import Store

__all__ = ["Store", "default_store_url", "open_store"]

# scheme -> "module:Class"; modules are imported only when their scheme is used.
_BACKENDS = {
    "memory": "taskmill.results.memory:MemoryStore",
    "sqlite": "taskmill.results.sqlite:SQLiteStore",
    "redis": "taskmill.results.redis:RedisStore",
    "rediss": "taskmill.results.redis:RedisStore",
    "postgresql": "taskmill.results.postgres:PostgresStore",
    "postgres": "taskmill.results.postgres:PostgresStore",
}


def open_store(url: str) -> Store:
    """Build the result store a URL names, e.g. ``sqlite:///taskmill.db`` or ``memory://``."""
    store_class: type[Store] = backend_class(_BACKENDS, url, "result store")
    return store_class(url)


def default_store_url(broker_url: str) -> str | None:
    """The broker's own URL when its backend also keeps results (memory, sqlite, redis, postgresql), else None."""
    return broker_url if urlsplit(broker_url).scheme in _BACKENDS else None
