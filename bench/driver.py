"""One measurement of one system: ``python driver.py KEY SCENARIO N --out FILE``.

run.py starts this in its own subprocess for every repetition, so a system that crashes or hangs
costs only its own figure. The driver starts the system's worker itself and always kills the
worker's whole process tree before it exits (it is a child subreaper, so even workers that
daemonize or re-parent their children are found).

Scenarios: enqueue_seq, enqueue_bulk, drain (no-op), drain_io (10 ms sleep), latency (which also
measures the idle worker's memory). Output: one JSON object written to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from systems import BY_KEY, servers  # noqa: E402
from systems.base import DONE, EXECS, FIRST, IDS, LATENCY, System, redis_client  # noqa: E402

BULK_BATCH = 1000
SETTLE_SECONDS = float(os.environ.get("BENCH_SETTLE", "1.0"))  # after the last message, before counting
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE", "3.0"))  # idle time before the memory reading
LATENCY_GAP = 0.005  # seconds between one latency message's start and the next send


def set_subreaper() -> None:
    """Orphans of our descendants are re-parented to us, so kill_tree can find them (Linux); and
    SIGTERM unwinds like Ctrl-C, so the ``finally`` blocks that kill the workers run."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def kill_tree() -> None:
    """SIGKILL every descendant of this process (workers and their re-parented orphans), then reap."""
    import psutil

    procs = _children(psutil.Process())
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _children(proc: Any) -> list[Any]:
    import psutil

    try:
        return list(proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return []


class Worker:
    """The system's worker, started from bench/ with its output in a log file."""

    def __init__(self, system: System, log_path: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ, PYTHONPATH=str(BENCH), PYTHONUNBUFFERED="1")
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            system.worker_command(), cwd=BENCH, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {self.proc.returncode}: {self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        self.log.flush()
        text = self.log_path.read_bytes()[-chars:].decode(errors="replace")
        return text.strip()

    def memory(self) -> dict[str, float]:
        """RSS, PSS and USS in MiB, summed over the worker's processes."""
        import psutil

        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        rss = pss = uss = 0
        for proc in procs:
            info = proc.memory_full_info()
            rss, pss, uss = rss + info.rss, pss + info.pss, uss + info.uss
        mib = 1024 * 1024
        return {"rss_mb": rss / mib, "pss_mb": pss / mib, "uss_mb": uss / mib, "processes": len(procs)}

    def dump(self) -> str:
        """py-spy dump of every worker process (what each thread is doing), for a stuck run's report."""
        import psutil

        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            return ""
        texts = []
        for proc in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]:
            done = subprocess.run(
                [str(spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True, check=False
            )
            texts.append(done.stdout + done.stderr)
        return "\n".join(texts)

    def stop(self) -> None:
        kill_tree()
        self.log.close()


def wait_done(worker: Worker, timeout: float) -> float | None:
    """time.time() of the n-th execution, or None on timeout; raises if the worker died."""
    client = redis_client()
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        popped = client.blpop([DONE], timeout=max(1, min(5, math.ceil(remaining))))
        if popped is not None:
            return float(popped[1])
        worker.check()
    return None


def counts(expected: int) -> dict[str, int]:
    client = redis_client()
    distinct, executions = int(client.scard(IDS)), int(client.get(EXECS) or 0)
    return {
        "expected": expected,
        "distinct": distinct,
        "executions": executions,
        "lost": expected - distinct,
        "dup": executions - distinct,
    }


def prefill(system: System, task: str, n: int) -> dict[str, Any]:
    args = [(f"m{i}", n) for i in range(n)]
    started = time.perf_counter()
    if system.bulk_api:
        for i in range(0, n, BULK_BATCH):
            system.send_bulk(task, args[i : i + BULK_BATCH])
    else:
        system.send_sequential(task, args)
    return {"prefill_s": time.perf_counter() - started, "prefill_bulk": bool(system.bulk_api)}


# -- scenarios ----------------------------------------------------------------------------------
def enqueue_seq(system: System, n: int, log: Path, timeout: float) -> dict[str, Any]:
    args = [(f"s{i}", n) for i in range(n)]
    system.send("noop", "warmup", n)  # connect first: the figure is the steady rate
    started = time.perf_counter()
    system.send_sequential("noop", args)
    elapsed = time.perf_counter() - started
    return {"value": n / elapsed, "seconds": elapsed, "n": n}


def enqueue_bulk(system: System, n: int, log: Path, timeout: float) -> dict[str, Any]:
    if not system.bulk_api:
        return {"na": True, "reason": "no batch API"}
    args = [(f"b{i}", n) for i in range(n)]
    system.send_bulk("noop", args[:10])  # connect first
    started = time.perf_counter()
    for i in range(0, n, BULK_BATCH):
        system.send_bulk("noop", args[i : i + BULK_BATCH])
    elapsed = time.perf_counter() - started
    return {"value": n / elapsed, "seconds": elapsed, "n": n, "api": system.bulk_api}


def _drain(task: str, system: System, n: int, log: Path, timeout: float) -> dict[str, Any]:
    info = prefill(system, task, n)
    if int(redis_client().get(EXECS) or 0):
        raise RuntimeError("messages ran before the worker started")
    worker = Worker(system, log)
    try:
        finished = wait_done(worker, timeout)
        if finished is None:
            time.sleep(SETTLE_SECONDS)
            return {
                "timeout": True,
                "error": f"not done within {timeout:.0f} s",
                **info,
                **counts(n),
                "log": worker.tail(),
                "dump": worker.dump(),
            }
        first = float(redis_client().get(FIRST))
        time.sleep(SETTLE_SECONDS)
        worker.check()
        result = counts(n)
    finally:
        worker.stop()
    elapsed = finished - first
    return {"value": (n - 1) / elapsed, "seconds": elapsed, "n": n, **info, **result}


def drain(system: System, n: int, log: Path, timeout: float) -> dict[str, Any]:
    return _drain("noop", system, n, log, timeout)


def drain_io(system: System, n: int, log: Path, timeout: float) -> dict[str, Any]:
    return _drain("sleep", system, n, log, timeout)


def latency(system: System, n: int, log: Path, timeout: float) -> dict[str, Any]:
    client = redis_client()
    worker = Worker(system, log)
    try:
        system.send("latency", "warmup", time.time())  # also waits out the worker's start
        if client.blpop([LATENCY], timeout=max(30, int(timeout / 2))) is None:
            worker.check()
            raise RuntimeError(f"the worker ran no message within {timeout / 2:.0f} s: {worker.tail()}")
        time.sleep(IDLE_SECONDS)
        memory = worker.memory()
        samples: list[float] = []
        missing = 0
        for i in range(n):
            sent = time.time()
            system.send("latency", f"l{i}", sent)
            popped = client.blpop([LATENCY], timeout=10)
            if popped is None:
                missing += 1
                worker.check()
                if missing >= 3:
                    raise RuntimeError(f"3 latency messages never started: {worker.tail()}")
                continue
            samples.append(float(popped[1]) * 1000)
            time.sleep(LATENCY_GAP)
        time.sleep(SETTLE_SECONDS)
        worker.check()
        result = counts(n + 1)
    finally:
        worker.stop()
    samples.sort()
    return {
        "p50": _percentile(samples, 50),
        "p95": _percentile(samples, 95),
        "p99": _percentile(samples, 99),
        "max": samples[-1] if samples else None,
        "n": n,
        **memory,
        **result,
    }


def _percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


SCENARIOS = {f.__name__: f for f in (enqueue_seq, enqueue_bulk, drain, drain_io, latency)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("key", choices=sorted(BY_KEY))
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("n", type=int)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    set_subreaper()
    entry = BY_KEY[args.key]
    os.environ.update(entry.env)
    redis_client().flushdb()
    result: dict[str, Any]
    try:
        # PostgreSQL's schemas dropped now; RabbitMQ's vhost listed while the module imports (which
        # connects to nothing), then emptied before the system is built; nothing for other backends.
        finish_reset = servers.start_reset(entry.module)
        module = importlib.import_module(f"systems.{entry.module}")
        finish_reset()
        system: System = module.system()
        label = {
            "concurrency": system.concurrency,
            "bulk_api": system.bulk_api,
            "notes": system.notes,
            "worker": " ".join(Path(system.worker_command()[0]).name.split() + system.worker_command()[1:]),
        }
        try:
            result = SCENARIOS[args.scenario](system, args.n, args.log, args.timeout)
            result["system"] = label
        finally:
            with contextlib.suppress(Exception):
                system.close()
    except Exception as exc:  # noqa: BLE001 -- reported as this system's failure, with its text
        result = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        kill_tree()
        redis_client().flushdb()
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
