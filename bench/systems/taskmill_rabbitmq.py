"""taskmill on RabbitMQ: ``taskmill worker --processes 1 --threads 8`` on the bench's vhost
(``amqp://guest:guest@127.0.0.1:5672/bench``, every queue in it deleted before each run).
Defaults otherwise: publisher confirms, ack after the actor ran."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import taskmill
from systems.base import System, bin_path, record, record_latency, record_sleep
from systems.servers import AMQP_URL

# The broker module is imported here so that a taskmill without RabbitMQ support fails at import
# (run.py then skips this system with the reason) rather than in every run.
importlib.import_module("taskmill.brokers.rabbitmq")

app = taskmill.App(AMQP_URL)


@app.actor
def noop(uid: str, n: int) -> None:
    record(uid, n)


@app.actor
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@app.actor
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


ACTORS = {"noop": noop, "sleep": sleep, "latency": latency}


class TaskmillRabbitMQ(System):
    name = "taskmill"
    backend = "rabbitmq"
    concurrency = "1 process x 8 threads"
    bulk_api = "app.enqueue([actor.message(...) x 1000])"
    notes = "at-least-once (publisher confirms, ack after run)"

    def send(self, task: str, *args: Any) -> None:
        ACTORS[task].send(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        app.enqueue([ACTORS[task].message(*args) for args in arg_list])

    def worker_command(self) -> list[str]:
        return [bin_path("taskmill"), "worker", "systems.taskmill_rabbitmq:app", "--processes", "1", "--threads", "8"]

    def close(self) -> None:
        app.close()


def system() -> System:
    return TaskmillRabbitMQ()
