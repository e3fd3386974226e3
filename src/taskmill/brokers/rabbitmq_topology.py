"""What the RabbitMQ broker declares, and the names it gives things.

For a taskmill queue ``q`` (``prefix`` defaults to ``taskmill``):

- ``prefix.q.<q>``: the queue workers consume. Classic by default, with ``x-max-priority`` 9 so
  priority 9 is delivered before 0; quorum with ``?queue_type=quorum`` (replicated, counts
  deliveries itself; RabbitMQ 3.x quorum queues have no priorities).
- ``prefix.dead.<q>``: its dead-letter queue, fed through the direct exchange ``prefix.dead``
  (also the main queue's ``x-dead-letter-exchange``). Each message carries why it died in headers.
- Delays without a waiting consumer and without head-of-line blocking: ``LEVELS`` topic exchanges
  ``prefix.delay.<n>`` and, per queue, quorum queues ``prefix.delay.<n>.<q>`` whose TTL is
  ``UNIT_MS * 2**n``. A delay is written in binary, one routing-key word per level; at level
  ``n`` a message whose bit is 1 waits in that level's queue (every message there has the same
  TTL, so the head always expires first) and is dead-lettered, at-least-once, to level ``n-1``;
  one whose bit is 0 passes straight on. After level 0 the exchange ``prefix.delay.out`` routes
  it to ``prefix.q.<q>``. Lateness is at most one unit plus the hops.
- ``prefix.queues``: a registry of queue names (RabbitMQ cannot list queues over AMQP), one
  message per name, compacted when read.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from taskmill.errors import ConfigurationError, InvalidOptionError

__all__ = [
    "LEVELS",
    "MAX_DELAY_MS",
    "UNIT_MS",
    "Names",
    "Options",
    "Topology",
    "delay_route",
    "delay_units",
    "parse_url",
    "tag",
]

LEVELS = 30
UNIT_MS = 100
MAX_DELAY_MS = ((1 << LEVELS) - 1) * UNIT_MS  # about 3.4 years
_MAX_NAME_BYTES = 255  # AMQP short strings


@dataclass(frozen=True, slots=True)
class Options:
    """The broker's own URL parameters; the rest of the URL goes to the AMQP client as it is."""

    amqp_url: str
    prefix: str = "taskmill"
    queue_type: str = "classic"
    timeout: float = 10.0  # seconds for connecting, declaring and waiting for a publisher confirm


def parse_url(url: str) -> Options:
    """Split taskmill's parameters (prefix, queue_type, timeout) off an amqp:// or amqps:// URL."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", "taskmill")
    queue_type = query.pop("queue_type", "classic")
    if queue_type not in ("classic", "quorum"):
        raise ConfigurationError(f"queue_type must be classic or quorum, not {queue_type!r}")
    if not prefix or "." in prefix or len(prefix) > 50:
        raise ConfigurationError(f"prefix must be 1-50 characters without dots, not {prefix!r}")
    try:
        timeout = float(query.pop("timeout", "10"))
    except ValueError:
        raise ConfigurationError("timeout must be a number of seconds") from None
    if not 0 < timeout <= 3600:
        raise ConfigurationError(f"timeout must be between 0 and 3600 seconds, not {timeout}")
    amqp_url = urlunsplit(parts._replace(query=urlencode(query)))
    return Options(amqp_url, prefix, queue_type, timeout)


def tag(queue: str) -> str:
    """One routing-key word standing for a queue name, whatever characters the name has."""
    return hashlib.sha256(queue.encode()).hexdigest()[:24]


class Names:
    """The RabbitMQ names of one taskmill queue's parts."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dead_exchange = f"{prefix}.dead"
        self.out_exchange = f"{prefix}.delay.out"
        self.registry = f"{prefix}.queues"

    def queue(self, queue: str) -> str:
        name = f"{self.prefix}.q.{queue}"
        if len(f"{self.prefix}.delay.{LEVELS}.{queue}".encode()) > _MAX_NAME_BYTES:
            raise ConfigurationError(f"queue {queue[:40]!r}...: too long for RabbitMQ (255 bytes with the prefix)")
        return name

    def dead(self, queue: str) -> str:
        return f"{self.prefix}.dead.{queue}"

    def level(self, queue: str, n: int) -> str:
        return f"{self.prefix}.delay.{n}.{queue}"

    def level_exchange(self, n: int) -> str:
        """Level ``n``'s exchange; level -1 is the way out to the queues."""
        return self.out_exchange if n < 0 else f"{self.prefix}.delay.{n}"


def delay_units(delay_ms: int) -> int:
    """A delay in whole units, rounded up so nothing comes early; InvalidOptionError past the longest."""
    if delay_ms > MAX_DELAY_MS:
        raise InvalidOptionError(f"delay of {delay_ms} ms is longer than RabbitMQ delays reach ({MAX_DELAY_MS} ms)")
    return math.ceil(delay_ms / UNIT_MS)


def delay_route(units: int, queue: str) -> tuple[int, str]:
    """(the level to publish at, the routing key) for a message due in ``units``."""
    bits = ".".join("1" if units >> n & 1 else "0" for n in range(LEVELS))
    return units.bit_length() - 1, f"{bits}.{tag(queue)}"


def _level_pattern(n: int, word: str, rest: str) -> str:
    return "*." * n + word + "." + rest


class Topology:
    """Declares, once per connection, what a queue needs; every declaration is idempotent."""

    def __init__(self, names: Names, queue_type: str) -> None:
        self.names = names
        self.queue_type = queue_type
        self._done: set[tuple[str, str]] = set()

    def reset(self) -> None:
        self._done.clear()

    def declared(self, queue: str, delayed: bool) -> bool:
        """Whether a message for ``queue`` needs no declaration first (read from any thread)."""
        return ("main", queue) in self._done and (not delayed or ("delays", queue) in self._done)

    def main_arguments(self, queue: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": self.names.dead_exchange,
            "x-dead-letter-routing-key": tag(queue),
        }
        if self.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
        else:
            arguments["x-max-priority"] = 9
        return arguments

    async def main(self, channel: Any, queue: str) -> bool:
        """Declare ``queue``'s main and dead queues; True the first time on this connection."""
        if ("main", queue) in self._done:
            return False
        names = self.names
        dead_args = {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}
        dead_exchange = await channel.declare_exchange(names.dead_exchange, "direct", durable=True)
        out = await channel.declare_exchange(names.out_exchange, "topic", durable=True)
        main = await channel.declare_queue(names.queue(queue), durable=True, arguments=self.main_arguments(queue))
        dead = await channel.declare_queue(names.dead(queue), durable=True, arguments=dead_args)
        await dead.bind(dead_exchange, tag(queue))
        await main.bind(out, f"#.{tag(queue)}")
        self._done.add(("main", queue))
        return True

    async def delays(self, channel: Any, queue: str) -> None:
        """Declare the delay levels (once) and ``queue``'s level queues."""
        names = self.names
        if ("levels", "") not in self._done:
            for n in range(LEVELS):
                exchange = await channel.declare_exchange(names.level_exchange(n), "topic", durable=True)
                lower = await channel.declare_exchange(names.level_exchange(n - 1), "topic", durable=True)
                await lower.bind(exchange, _level_pattern(n, "0", "#"))  # bit n is 0: pass straight on
            self._done.add(("levels", ""))
        if ("delays", queue) in self._done:
            return
        for n in range(LEVELS):
            level = await channel.declare_queue(
                names.level(queue, n),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-message-ttl": UNIT_MS << n,
                    "x-dead-letter-exchange": names.level_exchange(n - 1),
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            await level.bind(names.level_exchange(n), _level_pattern(n, "1", "*." * (LEVELS - n - 1) + tag(queue)))
        self._done.add(("delays", queue))
