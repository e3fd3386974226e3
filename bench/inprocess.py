"""A taskmill worker in this process, for A/B work on the hot path (not part of bench/run.sh).

    bench/.venv/bin/python bench/inprocess.py drain [N] [URL]     # no-op drain rate, fetch batch sizes
    bench/.venv/bin/python bench/inprocess.py iodrain [N] [URL]   # the same with tasks that sleep 10 ms
    bench/.venv/bin/python bench/inprocess.py latency [N] [URL]   # where enqueue-to-start time goes

URL defaults to redis://127.0.0.1:6379/13 (flushed first); amqp://, postgresql:// and sqlite:///
URLs work too (use a fresh ``?prefix=``, schema or file). The task is the bench's own no-op (one
pipelined round trip to Redis db 14), and the CLI's log handler is installed at INFO (set
TASKMILL_BENCH_LOG=WARNING to see what the per-message line costs). ``latency`` sends from a child
process, 5 ms apart, and prints the median of each stage: send -> the worker's wait returns ->
its fetch returns -> the actor starts, and the same for the slowest 5%. Figures move with the
machine's load: compare runs made one after the other, alternating the variants.
"""

from __future__ import annotations

import collections
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
from systems.base import EXECS, IDS, record, redis_client

import taskmill
from taskmill.worker.consumer import Worker
from taskmill.worker.process import configure_logging

DEFAULT_URL = "redis://127.0.0.1:6379/13"


def make_app(url: str) -> tuple[taskmill.App, Any, Any]:
    if url.startswith("redis"):
        redis.Redis.from_url(url).flushdb()
    app = taskmill.App(url)

    @app.actor
    def noop(uid: str, n: int) -> None:
        record(uid, n)

    @app.actor
    def io(uid: str, n: int) -> None:
        time.sleep(0.01)
        record(uid, n)

    @app.actor
    def lat(sent: float) -> None:
        MARKS.append((sent, STAGE.get("wake", 0.0), STAGE.get("fetched", 0.0), time.time()))

    NOOPS["io"] = io
    return app, noop, lat


NOOPS: dict[str, Any] = {}
MARKS: list[tuple[float, float, float, float]] = []
STAGE: dict[str, float] = {}


def quiet_logging() -> None:
    configure_logging(os.environ.get("TASKMILL_BENCH_LOG", "INFO"))
    handler = logging.getLogger().handlers[0]
    handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 -- lives as long as the process


def drain(n: int, url: str, io: bool = False) -> None:
    app, noop, _ = make_app(url)
    actor = NOOPS["io"] if io else noop
    redis_client().delete(EXECS, IDS, "bench:done", "bench:first")
    app.enqueue([actor.message(f"u{i}", n) for i in range(n)])
    quiet_logging()
    sizes: collections.Counter[int] = collections.Counter()
    fetch = app.broker.ack_and_fetch

    def counted(*args: Any) -> Any:
        lost, got = fetch(*args)
        sizes[len(got)] += 1
        return lost, got

    app.broker.ack_and_fetch = counted  # type: ignore[method-assign]
    worker = Worker(app, threads=8)
    worker.start()
    while (first := int(redis_client().get(EXECS) or 0)) < 1:  # start-up is not counted
        time.sleep(0.001)
    started, cpu = time.perf_counter(), time.process_time()
    while int(redis_client().get(EXECS) or 0) < n:
        time.sleep(0.01)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop()
    app.close()
    calls = sum(sizes.values())
    mean = sum(k * v for k, v in sizes.items()) / calls
    print(
        f"{(n - first) / seconds:,.0f} msgs/s, {cpu / (n - first) * 1e6:.0f} us CPU each; "
        f"{calls} fetches, {mean:.2f} per fetch: {dict(sorted(sizes.items()))}"
    )


def latency(n: int, url: str) -> None:
    if os.environ.get("TASKMILL_BENCH_PRODUCER"):
        _, _, lat = make_app_no_flush(url)
        times = redis.Redis.from_url(DEFAULT_URL)
        for _ in range(n + 20):
            sent = time.time()
            lat.send(sent)
            times.rpush("inprocess:send", repr(time.time() - sent))
            time.sleep(0.005)
        return
    app, _, _ = make_app(url)
    redis.Redis.from_url(DEFAULT_URL).delete("inprocess:send")
    broker = app.broker
    wait, fetch = broker.wait, broker.ack_and_fetch

    def timed_wait(*args: Any) -> Any:
        result = wait(*args)
        STAGE["wake"] = time.time()
        return result

    def timed_fetch(*args: Any) -> Any:
        result = fetch(*args)
        if result[1]:
            STAGE["fetched"] = time.time()
        return result

    broker.wait, broker.ack_and_fetch = timed_wait, timed_fetch  # type: ignore[method-assign]
    worker = Worker(app, threads=8)
    worker.start()
    time.sleep(0.5)
    env = {**os.environ, "TASKMILL_BENCH_PRODUCER": "1"}
    subprocess.run([sys.executable, __file__, "latency", str(n), url], env=env, check=True)
    time.sleep(0.3)
    worker.stop()
    app.close()
    marks = MARKS[20:]  # the first ones warm up connections and caches

    def median_ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    def p99_ms(values: list[float]) -> float:
        return sorted(values)[max(0, -(-len(values) * 99 // 100) - 1)] * 1000  # nearest rank

    def stages(of: list[tuple[float, float, float, float]]) -> str:
        return (
            f"p50 {median_ms([e - s for s, _, _, e in of]):.3f} ms = "
            f"send->wake {median_ms([w - s for s, w, _, _ in of]):.3f} "
            f"+ wake->fetched {median_ms([f - w for _, w, f, _ in of]):.3f} "
            f"+ fetched->start {median_ms([e - f for _, _, f, e in of]):.3f}"
        )

    sends = [float(x) for x in redis.Redis.from_url(DEFAULT_URL).lrange("inprocess:send", 20, -1)]
    print(
        f"n={len(marks)}: p99 {p99_ms([e - s for s, _, _, e in marks]):.3f} ms, {stages(marks)}; "
        f"send() alone {median_ms(sends):.3f} ms"
    )
    tail = sorted(marks, key=lambda m: m[3] - m[0])[-max(1, len(marks) // 20) :]
    print(f"the slowest {len(tail)} (5%): {stages(tail)}")


def make_app_no_flush(url: str) -> tuple[taskmill.App, Any, Any]:
    app = taskmill.App(url)

    @app.actor
    def io(uid: str, n: int) -> None:
        time.sleep(0.01)
        record(uid, n)

    @app.actor
    def lat(sent: float) -> None: ...

    return app, None, lat


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "drain"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else (20_000 if mode == "drain" else 300)
    url = sys.argv[3] if len(sys.argv) > 3 else DEFAULT_URL
    if mode == "iodrain":
        drain(n if len(sys.argv) > 2 else 2_000, url, io=True)
        return
    {"drain": drain, "latency": latency}[mode](n, url)


if __name__ == "__main__":
    main()
