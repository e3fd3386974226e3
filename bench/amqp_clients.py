"""What the AMQP client costs by itself, with no framework (not part of bench/run.sh):

    bench/.venv/bin/python bench/amqp_clients.py [N] [PREFETCH]    # drain rate and CPU per message
    bench/.venv/bin/python bench/amqp_clients.py latency [N]       # publish-to-worker-thread time

The shape of a threaded worker, three ways: one thread owns the connection and receives, eight worker
threads take each message from a queue.Queue and hand its ack back to the connection's thread.
Once on pika (a BlockingConnection driven by ``process_data_events``, acks through
``add_callback_threadsafe``, as Dramatiq does) and once on aiormq (an asyncio loop on its own
thread, acks through ``call_soon_threadsafe``), then on aiormq with uvloop's event loop in
place of asyncio's (as taskmill's RabbitMQ broker runs where uvloop is installed), three times
alternating. The drain takes N persistent messages (default 10,000) from a priority queue like
taskmill's, published beforehand, with the given prefetch (default 8, one per worker thread), and
prints messages/s and the process's CPU time per message. ``latency`` publishes N messages
(default 300) one at a time with publisher confirms, 5 ms apart, each carrying the time it was
sent, and prints the median and p99 of the time until a worker thread has it (the first 20 left
out). Uses the queue ``amqp-clients-bench`` in the default vhost of amqp://guest:guest@127.0.0.1:5672
(BENCH_AMQP_URL to change), deleted after.
"""

from __future__ import annotations

import asyncio
import os
import queue
import statistics
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
PROPERTIES = pika.BasicProperties(delivery_mode=2, priority=0, message_id="x", headers={"x-taskmill-delivered": 0})
Queue = queue.Queue[tuple[int, bytes]]


def declare() -> None:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.queue_delete(QUEUE)
    channel.queue_declare(QUEUE, durable=True, arguments={"x-max-priority": 9})
    connection.close()


def fill(n: int) -> None:
    declare()
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    for _ in range(n):
        channel.basic_publish("", QUEUE, BODY, PROPERTIES)
    connection.close()
    time.sleep(0.5)


def workers(n: int, ack: Callable[[int], None], seen: Callable[[bytes], None]) -> tuple[Queue, threading.Event]:
    """Start the worker threads: (the queue of (delivery tag, body) they take from, set once n were acked)."""
    work: Queue = queue.Queue()
    done, lock, count = threading.Event(), threading.Lock(), [0]

    def run() -> None:
        while True:
            tag, body = work.get()
            seen(body)
            ack(tag)
            with lock:
                count[0] += 1
                if count[0] == n:
                    done.set()

    for _ in range(THREADS):
        threading.Thread(target=run, daemon=True).start()
    return work, done


def on_pika(n: int, prefetch: int, seen: Callable[[bytes], None], ready: threading.Event) -> tuple[float, float]:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    work, done = workers(n, lambda tag: connection.add_callback_threadsafe(lambda: channel.basic_ack(tag)), seen)
    started, cpu = time.perf_counter(), time.process_time()
    channel.basic_consume(QUEUE, lambda _c, method, _p, body: work.put((method.delivery_tag, body)))
    ready.set()
    while not done.is_set():
        connection.process_data_events(time_limit=0.005)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    connection.close()
    return n / seconds, cpu / n * 1e6


def on_aiormq(
    n: int,
    prefetch: int,
    seen: Callable[[bytes], None],
    ready: threading.Event,
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
) -> tuple[float, float]:
    import aiormq

    loop = new_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    channel: Any = None

    def ack(tag: int) -> None:
        loop.call_soon_threadsafe(lambda: loop.create_task(channel.basic_ack(tag, wait=False)))

    work, done = workers(n, ack, seen)

    async def connect() -> Any:
        nonlocal channel
        connection = await aiormq.connect(URL)
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=prefetch)
        return connection

    async def received(message: Any) -> None:
        work.put((message.delivery_tag, message.body))

    connection = asyncio.run_coroutine_threadsafe(connect(), loop).result()  # untimed, as for pika
    started, cpu = time.perf_counter(), time.process_time()
    asyncio.run_coroutine_threadsafe(channel.basic_consume(QUEUE, received), loop).result()
    ready.set()
    done.wait()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    asyncio.run_coroutine_threadsafe(connection.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    return n / seconds, cpu / n * 1e6


def on_uvloop(n: int, prefetch: int, seen: Callable[[bytes], None], ready: threading.Event) -> tuple[float, float]:
    import uvloop

    return on_aiormq(n, prefetch, seen, ready, uvloop.new_event_loop)


CLIENTS = (("pika", on_pika), ("aiormq", on_aiormq), ("uvloop", on_uvloop))


def drain(n: int, prefetch: int) -> None:
    for _ in range(3):
        for label, consume in CLIENTS:
            fill(n)
            rate, cpu = consume(n, prefetch, lambda _: None, threading.Event())
            print(f"{label:7}  {rate:7,.0f} msgs/s  {cpu:5.0f} us CPU each", flush=True)


def latency(n: int) -> None:
    for _ in range(3):
        for label, consume in CLIENTS:
            declare()
            waits: list[float] = []
            ready = threading.Event()

            def seen(body: bytes, waits: list[float] = waits) -> None:
                waits.append(time.time() - float(body))

            receiving = threading.Thread(target=consume, args=(n, THREADS, seen, ready))
            receiving.start()
            ready.wait(10)
            connection = pika.BlockingConnection(pika.URLParameters(URL))
            channel = connection.channel()
            channel.confirm_delivery()
            for _ in range(n):
                channel.basic_publish("", QUEUE, repr(time.time()).encode(), PROPERTIES)
                time.sleep(0.005)
            connection.close()
            receiving.join()
            ordered = sorted(waits[20:])
            p50, p99 = statistics.median(ordered), ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]
            print(f"{label:7}  p50 {p50 * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms", flush=True)


def main() -> None:
    try:
        if sys.argv[1:2] == ["latency"]:
            latency(int(sys.argv[2]) if len(sys.argv) > 2 else 300)
        else:
            drain(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000, int(sys.argv[2]) if len(sys.argv) > 2 else THREADS)
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(URL))
        connection.channel().queue_delete(QUEUE)
        connection.close()


if __name__ == "__main__":
    main()
