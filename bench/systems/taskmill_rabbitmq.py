"""taskmill on RabbitMQ: ``taskmill worker --processes 1 --threads 8`` on the bench's vhost
(``amqp://guest:guest@127.0.0.1:5672/bench``, every queue in it deleted before each run).
Defaults otherwise: publisher confirms, ack after the actor ran."""

from __future__ import annotations

import importlib

from systems.base import System
from systems.servers import AMQP_URL
from systems.taskmill_common import TaskmillSystem, bench_app

# The broker module is imported here so that a taskmill without RabbitMQ support fails at import
# (run.py then skips this system with the reason) rather than in every run.
importlib.import_module("taskmill.brokers.rabbitmq")

app, ACTORS = bench_app(AMQP_URL)


def system() -> System:
    return TaskmillSystem(
        "taskmill_rabbitmq", app, ACTORS, "rabbitmq", "at-least-once (publisher confirms, ack after run)"
    )
