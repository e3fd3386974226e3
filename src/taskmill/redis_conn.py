"""The Redis connection the Redis broker and result store share: URL options, a key prefix, a
bounded retry for dropped connections, and redis-py's errors turned into taskmill's typed ones.

URL: ``redis://[[user]:password@]host[:port][/db][?prefix=taskmill&socket_timeout=5]`` and
``rediss://`` for TLS (redis-py's own query options, such as ``ssl_cert_reqs``, pass through).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskmill.errors import BrokerError, BrokerUnavailable, ConfigurationError

__all__ = ["connect", "translated"]

T = TypeVar("T")


def connect(url: str) -> tuple[Any, str]:
    """A redis-py client for ``url`` and the key prefix it names (default ``taskmill``)."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigurationError("redis:// needs the redis package: pip install 'taskmill[redis]'") from None
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.pop("dead_retention", None)  # the broker's own option; the result store shares the URL
    prefix = query.pop("prefix", "taskmill")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"prefix={prefix!r}: use a non-empty prefix without braces")
    query.setdefault("socket_timeout", "10")
    query.setdefault("socket_connect_timeout", "5")
    query.setdefault("health_check_interval", "15")
    clean = urlunsplit(parts._replace(query=urlencode(query)))
    try:
        client = redis.Redis.from_url(
            clean,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"bad Redis URL option: {exc}") from None
    return client, prefix


@contextmanager
def translated(on_error: Callable[[], None] | None = None) -> Iterator[None]:
    """redis-py's connection errors become BrokerUnavailable, the rest BrokerError (after ``on_error``)."""
    import redis

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        if on_error is not None:
            on_error()
        raise BrokerUnavailable(f"Redis unavailable: {exc}") from exc
    except redis.RedisError as exc:
        if on_error is not None:
            on_error()
        raise BrokerError(f"Redis error: {exc}") from exc
