"""What a RabbitMQ priority queue costs by itself, with no framework (not part of bench/run.sh):

    bench/.venv/bin/python bench/amqp_priority.py [N]

Fills a durable classic queue with N persistent messages (a quarter of them with publisher confirms,
one at a time), then consumes and acks them with prefetch 8, on pika; once on a plain queue and
once with ``x-max-priority`` 9, as taskmill declares its queues (Dramatiq's have no priorities),
three times alternating. Uses the queue ``amqp-priority-bench`` in the default vhost of
amqp://guest:guest@127.0.0.1:5672 (BENCH_AMQP_URL to change), deleted before and after.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pika

QUEUE = "amqp-priority-bench"
URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def run(arguments: dict[str, Any], n: int) -> tuple[float, float]:
    """(confirmed publishes/s, consumed and acked/s)."""
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_delete(QUEUE)
    channel.queue_declare(QUEUE, durable=True, arguments=arguments)
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, priority=0, message_id="x")
    confirmed = n // 4
    started = time.perf_counter()
    for _ in range(confirmed):
        channel.basic_publish("", QUEUE, b'{"a": 1}', properties)
    publish_rate = confirmed / (time.perf_counter() - started)
    filler = connection.channel()  # the rest without confirms: only the consuming is timed below
    for _ in range(n - confirmed):
        filler.basic_publish("", QUEUE, b'{"a": 1}', properties)
    time.sleep(1)
    channel.basic_qos(prefetch_count=8)
    consumed = 0
    started = time.perf_counter()
    for method, _, _ in channel.consume(QUEUE, inactivity_timeout=2):
        if method is None:
            break
        channel.basic_ack(method.delivery_tag)
        consumed += 1
        if consumed == n:
            break
    consume_rate = consumed / (time.perf_counter() - started)
    channel.cancel()
    channel.queue_delete(QUEUE)
    connection.close()
    return publish_rate, consume_rate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    for _ in range(3):
        for label, arguments in (("plain", {}), ("priority 9", {"x-max-priority": 9})):
            publish_rate, consume_rate = run(arguments, n)
            print(f"{label:10}  confirmed publish {publish_rate:8,.0f}/s  consumed and acked {consume_rate:8,.0f}/s")


if __name__ == "__main__":
    main()
