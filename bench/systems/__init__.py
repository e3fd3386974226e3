"""The systems under test, one module each; REGISTRY names every configuration the bench runs.

Adding a system is one more module with a ``system()`` function and one more Entry here. A module
is named ``<system>_<backend>``; the backend suffix (``postgres``, ``rabbitmq``) tells servers.py
which server to clean before each run and run.py which server must be reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Entry:
    """One configuration: which module, with which environment, shown in which table."""

    key: str  # unique, used on the command line (--only) and in the JSON
    module: str  # systems.<module>
    table: str  # "redis" (1 process x 8 threads), "redis-best", "rabbitmq", "postgres", "sqlite", "reference"
    env: dict[str, str] = field(default_factory=dict)  # read by the module in producer and worker


REGISTRY: list[Entry] = [
    # Redis, one worker process x 8 threads (or the nearest equivalent).
    Entry("taskmill", "taskmill_redis", "redis"),
    Entry("dramatiq", "dramatiq_redis", "redis"),
    Entry("celery", "celery_redis", "redis"),
    Entry("rq", "rq_redis", "redis"),
    Entry("huey", "huey_redis", "redis"),
    Entry("taskiq", "taskiq_redis", "redis"),
    # Redis, each system's best configuration on this machine (2 cores).
    Entry("taskmill-2p", "taskmill_redis", "redis-best", {"BENCH_PROCESSES": "2"}),
    Entry("dramatiq-2p", "dramatiq_redis", "redis-best", {"BENCH_PROCESSES": "2"}),
    Entry("celery-prefork", "celery_redis", "redis-best", {"BENCH_POOL": "prefork"}),
    Entry("huey-2p", "huey_redis", "redis-best", {"BENCH_PROCESSES": "2"}),
    # RabbitMQ (the bench's vhost), one worker process x 8 threads.
    Entry("taskmill-rabbitmq", "taskmill_rabbitmq", "rabbitmq"),
    Entry("dramatiq-rabbitmq", "dramatiq_rabbitmq", "rabbitmq"),
    Entry("celery-rabbitmq", "celery_rabbitmq", "rabbitmq"),
    # PostgreSQL (database test, the bench's schemas), one worker process x 8 threads.
    Entry("taskmill-postgres", "taskmill_postgres", "postgres"),
    Entry("procrastinate", "procrastinate_postgres", "postgres"),
    # The embedded SQLite brokers.
    Entry("taskmill-sqlite", "taskmill_sqlite", "sqlite", {"BENCH_SYNCHRONOUS": "full"}),
    Entry("taskmill-sqlite-normal", "taskmill_sqlite", "sqlite", {"BENCH_SYNCHRONOUS": "normal"}),
    Entry("huey-sqlite", "huey_sqlite", "sqlite"),
    # What Python and Redis allow: a hand-written consumer, no framework.
    Entry("ceiling", "ceiling_redis", "reference"),
]

BY_KEY = {entry.key: entry for entry in REGISTRY}
