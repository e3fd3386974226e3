"""Dramatiq on RabbitMQ: ``dramatiq --processes 1 --threads 8`` with its default middleware and
``RabbitmqBroker(confirm_delivery=True)`` (taskmill confirms every publish, so this is the fair
comparison; Dramatiq's default does not wait for the broker's confirm)."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from systems.base import System, bin_path, record, record_latency, record_sleep
from systems.servers import AMQP_URL

broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=True)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(uid: str, n: int) -> None:
    record(uid, n)


@dramatiq.actor(max_retries=0)
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@dramatiq.actor(max_retries=0)
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


ACTORS = {"noop": noop, "sleep": sleep, "latency": latency}


class DramatiqRabbitMQ(System):
    name = "dramatiq"
    backend = "rabbitmq"
    concurrency = "1 process x 8 threads"
    bulk_api = None  # no batch API: broker.enqueue sends one message per call
    notes = "at-least-once (acks after run); confirm_delivery=True; no per-message log line by default"

    def send(self, task: str, *args: Any) -> None:
        ACTORS[task].send(*args)

    def worker_command(self) -> list[str]:
        return [bin_path("dramatiq"), "systems.dramatiq_rabbitmq", "--processes", "1", "--threads", "8"]

    def close(self) -> None:
        broker.close()


def system() -> System:
    return DramatiqRabbitMQ()
