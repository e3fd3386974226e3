"""What the AMQP client costs by itself, with no framework (not part of bench/run.sh):

    bench/.venv/bin/python bench/amqp_clients.py [N] [PREFETCH]

The shape of a threaded worker, twice: one thread owns the connection and receives, eight worker
threads take each message from a queue.Queue and hand its ack back to the connection's thread.
Once on pika (a BlockingConnection driven by ``process_data_events``, acks through
``add_callback_threadsafe``, as Dramatiq does) and once on aiormq (an asyncio loop on its own
thread, acks through ``call_soon_threadsafe``, as taskmill's RabbitMQ broker does), three times
alternating. Each run drains N persistent messages (default 10,000) from a priority queue like
taskmill's, published beforehand, with the given prefetch (default 8, one per worker thread), and
prints messages/s and the process's CPU time per message. Uses the queue ``amqp-clients-bench`` in
the default vhost of amqp://guest:guest@127.0.0.1:5672 (BENCH_AMQP_URL to change), deleted after.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pika

QUEUE = "amqp-clients-bench"
URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
THREADS = 8
BODY = b'{"v":1,"id":"0123456789abcdef0123456789abcdef","actor":"noop","args":["m1",10000],"kwargs":{}}'


def fill(n: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_delete(QUEUE)
    channel.queue_declare(QUEUE, durable=True, arguments={"x-max-priority": 9})
    properties = pika.BasicProperties(delivery_mode=2, priority=0, message_id="x", headers={"x-taskmill-delivered": 0})
    for _ in range(n):
        channel.basic_publish("", QUEUE, BODY, properties)
    connection.close()
    time.sleep(0.5)


def workers(n: int, ack: Callable[[int], None]) -> tuple[queue.Queue[int], threading.Event]:
    """Start the worker threads: (the queue they take delivery tags from, set once n were acked)."""
    work: queue.Queue[int] = queue.Queue()
    done, lock, count = threading.Event(), threading.Lock(), [0]

    def run() -> None:
        while True:
            ack(work.get())
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()

    for _ in range(THREADS):
        threading.Thread(target=run, daemon=True).start()
    return work, done


def on_pika(n: int, prefetch: int) -> tuple[float, float]:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    work, done = workers(n, lambda tag: connection.add_callback_threadsafe(lambda: channel.basic_ack(tag)))
    started, cpu = time.perf_counter(), time.process_time()
    channel.basic_consume(QUEUE, lambda _c, method, _p, _b: work.put(method.delivery_tag))
    while not done.is_set():
        connection.process_data_events(time_limit=0.005)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    connection.close()
    return n / seconds, cpu / n * 1e6


def on_aiormq(n: int, prefetch: int) -> tuple[float, float]:
    import aiormq

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    channel: Any = None

    def ack(tag: int) -> None:
        loop.call_soon_threadsafe(lambda: loop.create_task(channel.basic_ack(tag, wait=False)))

    work, done = workers(n, ack)

    async def connect() -> Any:
        nonlocal channel
        connection = await aiormq.connect(URL)
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=prefetch)
        return connection

    async def received(message: Any) -> None:
        work.put(message.delivery_tag)

    connection = asyncio.run_coroutine_threadsafe(connect(), loop).result()  # untimed, as for pika
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run_coroutine_threadsafe(channel.basic_consume(QUEUE, received), loop).result()
    done.wait()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    asyncio.run_coroutine_threadsafe(connection.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    return n / seconds, cpu / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    prefetch = int(sys.argv[2]) if len(sys.argv) > 2 else THREADS
    try:
        for _ in range(3):
            for label, consume in (("pika", on_pika), ("aiormq", on_aiormq)):
                fill(n)
                rate, cpu = consume(n, prefetch)
                print(f"{label:7}  {rate:7,.0f} msgs/s  {cpu:5.0f} us CPU each", flush=True)
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        connection.channel().queue_delete(QUEUE)
        connection.close()


if __name__ == "__main__":
    main()
