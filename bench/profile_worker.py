"""Profile a system's worker while it drains: ``bench/.venv/bin/python bench/profile_worker.py [KEY] [N]``.

Queues N no-op messages (default 40,000), starts the worker, and samples every worker process with
py-spy (``--gil``: only the thread holding the GIL, i.e. where the CPU goes) for the drain. Writes
the collapsed stacks to $TMPDIR/taskmill-bench-profile-KEY-MODE.txt, and prints the top frames
by self and by inclusive time. Needs root (or ptrace rights) for py-spy.
"""

from __future__ import annotations

import collections
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from driver import Worker, kill_tree, prefill, set_subreaper  # noqa: E402
from systems import BY_KEY  # noqa: E402
from systems.base import EXECS, redis_client  # noqa: E402


def main() -> None:
    key = sys.argv[1] if len(sys.argv) > 1 else "taskmill"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 40_000
    mode = sys.argv[3] if len(sys.argv) > 3 else "gil"  # gil | all (every thread, idle ones included)
    set_subreaper()
    entry = BY_KEY[key]
    os.environ.update(entry.env)
    os.environ.setdefault("BENCH_TMP", tempfile.gettempdir())
    out = Path(tempfile.gettempdir()) / f"taskmill-bench-profile-{key}-{mode}"
    redis_client().flushdb()
    system = importlib.import_module(f"systems.{entry.module}").system()
    prefill(system, "noop", n)
    worker = Worker(system, Path(tempfile.gettempdir()) / f"taskmill-bench-profile-{key}.log")
    try:
        while int(redis_client().get(EXECS) or 0) < n // 20:
            worker.check()
            time.sleep(0.05)
        import psutil

        procs = [psutil.Process(worker.proc.pid), *psutil.Process(worker.proc.pid).children(recursive=True)]
        busiest = max(procs, key=lambda p: p.cpu_percent(0.3))
        label = f"{busiest.pid} ({busiest.name()})"
        spy = str(Path(sys.executable).with_name("py-spy"))
        flags = ["--gil"] if mode == "gil" else ["--idle"]
        before = int(redis_client().get(EXECS) or 0)
        started = time.time()
        subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(busiest.pid),
                "--duration",
                "6",
                "--rate",
                "250",
                "--threads",
                "--nonblocking",
                "--format",
                "raw",
                "-o",
                f"{out}.txt",
                *flags,
            ],
            check=True,
            capture_output=True,
        )
        rate = (int(redis_client().get(EXECS) or 0) - before) / (time.time() - started)
    finally:
        worker.stop()
        kill_tree()
        redis_client().flushdb()
    print(f"{key}: profiled pid {label} at {rate:,.0f} msgs/s while sampled")
    summarize(Path(f"{out}.txt"))


def summarize(path: Path, top: int = 30) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0].split(" ")[0] if frames else "?"] += count
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames[1:]}:
            inclusive[frame] += count
    print(f"{total} samples")
    print("\nby thread:")
    for name, count in threads.most_common(12):
        print(f"  {count / total:6.1%}  {name}")
    print("\nself time:")
    for name, count in own.most_common(top):
        print(f"  {count / total:6.1%}  {name}")
    print("\ninclusive time:")
    for name, count in inclusive.most_common(top):
        print(f"  {count / total:6.1%}  {name}")


def _short(frame: str) -> str:
    frame = frame.replace(str(BENCH), "bench").replace("/usr/local/lib/python3.11/", "")
    return frame.replace("bench/.venv/lib/python3.11/site-packages/", "").replace(" (/work/main/src/", " (")


if __name__ == "__main__":
    main()
