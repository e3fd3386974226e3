"""Celery on RabbitMQ (py-amqp through kombu): ``celery worker -P threads -c 8`` with
``task_acks_late`` (ack after the task, as taskmill and Dramatiq do), a prefetch multiplier of 1
and publisher confirms (``confirm_publish``, as taskmill and the Dramatiq here); results ignored
(no result backend is configured for any system)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, group

from systems.base import System, bin_path, record, record_latency, record_sleep
from systems.servers import AMQP_URL

app = Celery("bench", broker=AMQP_URL)  # amqp:// is py-amqp (librabbitmq is not installed)
app.conf.broker_transport_options = {"confirm_publish": True}  # wait for the broker's confirm, as taskmill does
app.conf.task_ignore_result = True
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_connection_retry_on_startup = True


@app.task(name="noop")
def noop(uid: str, n: int) -> None:
    record(uid, n)


@app.task(name="sleep")
def sleep(uid: str, n: int) -> None:
    record_sleep(uid, n)


@app.task(name="latency")
def latency(uid: str, sent: float) -> None:
    record_latency(uid, sent)


TASKS = {"noop": noop, "sleep": sleep, "latency": latency}


class CeleryRabbitMQ(System):
    name = "celery"
    backend = "rabbitmq"
    concurrency = "1 process x 8 threads (-P threads -c 8)"
    bulk_api = "group(...).apply_async() x 1000"
    notes = (
        "at-least-once here (task_acks_late=True, worker_prefetch_multiplier=1, confirm_publish=True); "
        "default WARNING log level"
    )

    def send(self, task: str, *args: Any) -> None:
        TASKS[task].delay(*args)

    def send_bulk(self, task: str, arg_list: Sequence[Sequence[Any]]) -> None:
        group(TASKS[task].s(*args) for args in arg_list).apply_async()

    def worker_command(self) -> list[str]:
        return [bin_path("celery"), "-A", "systems.celery_rabbitmq", "worker", "-P", "threads", "-c", "8"]

    def close(self) -> None:
        app.close()


def system() -> System:
    return CeleryRabbitMQ()
