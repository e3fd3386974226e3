"""THE benchmark command: ``bash bench/run.sh [--quick]`` (which runs this file in bench/.venv).

Runs every system of systems.REGISTRY against the same Redis (db 14, flushed between runs), RabbitMQ
(vhost bench, emptied between runs), PostgreSQL (database test, schemas taskmill_bench and
procrastinate_bench, dropped between runs) and the embedded SQLite brokers, in one run. A system
whose module does not import (say, a taskmill without that broker yet) or whose server is not
reachable is skipped, and the report says why. Scenarios are interleaved (scenario -> repetition
-> system), so a noisy minute on this shared machine hits every system alike. Each repetition of each system
runs in its own subprocess (driver.py) with a timeout; a failure is recorded with its error and the
run goes on. Writes bench/results/latest.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from driver import kill_tree, set_subreaper  # noqa: E402
from report import render  # noqa: E402
from systems import REGISTRY, Entry, servers  # noqa: E402
from systems.base import REDIS_URL  # noqa: E402

SCENARIOS = ["enqueue_seq", "enqueue_bulk", "drain", "drain_io", "latency"]
FULL = {"enqueue_seq": 5000, "enqueue_bulk": 20000, "drain": 20000, "drain_io": 2000, "latency": 500}
QUICK = {"enqueue_seq": 300, "enqueue_bulk": 500, "drain": 500, "drain_io": 100, "latency": 20}
FAILED_LOGS = Path(tempfile.gettempdir()) / "taskmill-bench-failed"  # full worker logs of failed runs
LOCK = Path(tempfile.gettempdir()) / "taskmill-bench.lock"  # one bench run at a time on this machine
QUICK_ENV = {"BENCH_IDLE": "0.3", "BENCH_SETTLE": "0.2"}  # shorter waits in the smoke test
# Which scenarios each table runs: the best configurations change the worker only.
TABLE_SCENARIOS = {
    "redis": SCENARIOS,
    "redis-best": ["drain", "drain_io", "latency"],
    "rabbitmq": SCENARIOS,
    "postgres": SCENARIOS,
    "sqlite": SCENARIOS,
    "reference": ["enqueue_seq", "enqueue_bulk", "drain", "latency"],
}
# Systems too slow to drain the full count in reasonable time run a fraction of it (reported).
SCALE = {"rq": {"drain": 0.05, "drain_io": 0.25}}
PACKAGES = [
    "taskmill",
    "dramatiq",
    "celery",
    "kombu",
    "rq",
    "huey",
    "taskiq",
    "taskiq-redis",
    "redis",
    "hiredis",
    "aio-pika",
    "pika",
    "amqp",
    "psycopg",
    "procrastinate",
    "orjson",
    "psutil",
]
SERVERS = {"postgres": "PostgreSQL", "rabbitmq": "RabbitMQ"}  # besides Redis, by module suffix


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def size(entry: Entry, scenario: str, plan: dict[str, int]) -> int:
    return max(10, int(plan[scenario] * SCALE.get(entry.key, {}).get(scenario, 1.0)))


def timeout_for(scenario: str, n: int) -> float:
    """The driver's own wait for the last message: generous, since rq drains ~35/s here."""
    per_message = {"enqueue_seq": 0.01, "enqueue_bulk": 0.005, "drain": 0.03, "drain_io": 0.05, "latency": 0.05}
    return 60 + n * per_message[scenario]


def run_one(entry: Entry, scenario: str, n: int, workdir: Path, tag: str, quick: bool) -> dict[str, Any]:
    """One repetition in its own subprocess; every process it left behind is killed afterwards."""
    out, worker_log = workdir / f"{tag}.json", workdir / f"{tag}.log"
    tmp = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    timeout = timeout_for(scenario, n)
    command = [
        sys.executable,
        str(BENCH / "driver.py"),
        entry.key,
        scenario,
        str(n),
        "--out",
        str(out),
        "--log",
        str(worker_log),
        "--timeout",
        str(timeout),
    ]
    env = dict(os.environ, BENCH_TMP=str(tmp), BENCH_REDIS_URL=REDIS_URL, **(QUICK_ENV if quick else {}))
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, env=env, cwd=BENCH, capture_output=True, text=True, timeout=timeout + 60 + n / 200, check=False
        )
        if out.exists():
            result: dict[str, Any] = json.loads(out.read_text())
        else:
            result = {"error": f"driver exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}
    except subprocess.TimeoutExpired:
        result = {"error": f"driver timed out after {timeout + 60:.0f} s"}
    finally:
        kill_tree()  # anything the driver left (it is killed on timeout; its workers re-parent to us)
        shutil.rmtree(tmp, ignore_errors=True)
        _flush()
    result["wall_s"] = time.monotonic() - started
    if ("error" in result or result.get("lost") or result.get("dup")) and worker_log.exists():
        result.setdefault("log", worker_log.read_bytes()[-1500:].decode(errors="replace"))
        FAILED_LOGS.mkdir(exist_ok=True)
        kept = FAILED_LOGS / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}.log"
        shutil.copy(worker_log, kept)
        result["log_file"] = str(kept)
    return result


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def _flush() -> None:
    with contextlib.suppress(Exception):
        _redis().flushdb()


def redis_benchmark(n: int, reps: int) -> dict[str, Any]:
    """redis-benchmark -q -n N -t set,lpush,rpop on db 14 (it never touches another db)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return {"error": "redis-benchmark is not installed (apt-get install redis-tools)"}
    db = REDIS_URL.rsplit("/", 1)[-1]
    command = [exe, "-h", "127.0.0.1", "-p", "6379", "--dbnum", db, "-q", "-n", str(n), "-t", "set,lpush,rpop"]
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        text = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300).stdout
        for line in text.replace("\r", "\n").splitlines():
            match = re.match(r"^(\w+): ([\d.]+) requests per second", line.strip())
            if match:
                samples.setdefault(match.group(1), []).append(float(match.group(2)))
        _flush()
    return {
        "command": shlex.join(command),
        **{name: summarize([{"value": v} for v in values]) for name, values in samples.items()},
    }


def summarize(reps: list[dict[str, Any]], field: str = "value") -> dict[str, Any]:
    values = [r[field] for r in reps if r.get(field) is not None and "error" not in r]
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def source_state() -> str:
    """The taskmill commit and a digest of src/ as it is now (editable install: the bench runs the tree)."""
    import hashlib

    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted((ROOT / "src").rglob("*")):
        if path.is_file() and path.suffix in {".py", ".lua", ".sql"}:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"{commit}{' + uncommitted changes' if dirty else ''} (src digest {digest.hexdigest()[:10]})"


def _digest(state: str) -> str:
    return state.rsplit("src digest ", 1)[-1]


def machine(command: str) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": _redis().info("server").get("redis_version", "?"),
        "servers": {"Redis": _redis().info("server").get("redis_version", "?")},
        "packages": versions,
        "taskmill_commit": source_state(),
        "loadavg_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: fewer messages, 1 repetition, no best-config table"
    )
    parser.add_argument("--reps", type=int, help="repetitions of each figure (default 3; 1 with --quick)")
    parser.add_argument("--only", help="comma-separated system keys (see systems/__init__.py)")
    parser.add_argument("--json", type=Path, help="default bench/results/latest.json (quick: quick.json)")
    parser.add_argument("--markdown", type=Path, help="default docs/benchmarks.md (quick: bench/results/quick.md)")
    args = parser.parse_args()
    # A smoke test never overwrites the published table.
    args.json = args.json or BENCH / "results" / ("quick.json" if args.quick else "latest.json")
    args.markdown = args.markdown or (BENCH / "results" / "quick.md" if args.quick else ROOT / "docs" / "benchmarks.md")
    lock = one_run_at_a_time()  # noqa: F841 -- held until this process exits
    set_subreaper()
    try:
        _redis().ping()
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"Redis is not reachable at {REDIS_URL}: {exc}")

    plan = QUICK if args.quick else FULL
    reps = args.reps or (1 if args.quick else 3)
    entries = [e for e in REGISTRY if not (args.quick and e.table == "redis-best")]
    if args.only:
        wanted = {k.strip() for k in args.only.split(",")}
        unknown = wanted - {e.key for e in REGISTRY}
        if unknown:
            sys.exit(f"unknown system(s) {', '.join(sorted(unknown))}; known: {', '.join(e.key for e in REGISTRY)}")
        entries = [e for e in REGISTRY if e.key in wanted]
    command = "bash bench/run.sh" + ("".join(f" {a}" for a in sys.argv[1:]) if sys.argv[1:] else "")
    results: dict[str, Any] = {"meta": machine(command), "plan": plan, "reps": reps, "quick": args.quick, "runs": {}}
    results["meta"]["systems"] = {e.key: {"table": e.table, "module": e.module, "env": e.env} for e in entries}
    results["skipped"] = preflight(entries, results["meta"]["servers"])
    entries = [e for e in entries if e.key not in results["skipped"]]
    results["meta"]["source_states"] = [results["meta"]["taskmill_commit"]]
    begun = time.monotonic()

    log(f"redis-benchmark ({'10,000' if args.quick else '100,000'} requests x {reps})")
    results["redis_benchmark"] = redis_benchmark(10_000 if args.quick else 100_000, reps)
    run_all(entries, plan, reps, results, args)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["duration_s"] = time.monotonic() - begun
    save(results, args.json)
    markdown = render(results, keep_from=args.markdown)
    args.markdown.write_text(markdown)
    print(markdown)
    log(f"wrote {args.json} and {args.markdown} in {time.monotonic() - begun:.0f} s")


def one_run_at_a_time() -> Any:
    """Wait while another bench run holds the lock: two runs share Redis db 14 (each flushes it and
    counts every id in it), the RabbitMQ vhost and the PostgreSQL schemas, so they would spoil each
    other's lost/dup counts. Returns the open lock file (the lock lasts as long as it stays open)."""
    handle = LOCK.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        log(f"waiting for the other bench run to finish ({handle.read().strip() or 'pid ?'}, lock {LOCK})")
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}: {shlex.join(sys.argv)}\n")
    handle.flush()
    return handle


def preflight(entries: list[Entry], versions: dict[str, str]) -> dict[str, str]:
    """The systems that cannot run here, with the reason: their server is not reachable (checked
    once per backend; RabbitMQ's vhost is created when missing) or their module does not import."""
    skipped: dict[str, str] = {}
    for backend, title in SERVERS.items():
        users = [e for e in entries if servers.backend_of(e.module) == backend]
        if not users:
            continue
        problem = servers.check(backend)
        if problem:
            for entry in users:
                skipped[entry.key] = f"{title} is not usable: {problem}"
        else:
            versions[title] = servers.version(backend) or "?"
    modules = sorted({e.module for e in entries if e.key not in skipped})
    failed = _probe(modules)
    if len(modules) > 1:  # confirm each failure alone: one module's import must not spoil another's
        failed = {m: why for m in failed for why in [_probe([m]).get(m)] if why}
    for entry in entries:
        if entry.module in failed and entry.key not in skipped:
            skipped[entry.key] = f"systems/{entry.module}.py does not import: {failed[entry.module]}"
    for key, reason in skipped.items():
        log(f"SKIPPED {key}: {reason}")
    return skipped


def _probe(modules: list[str]) -> dict[str, str]:
    if not modules:
        return {}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        cwd=BENCH,
        env=dict(os.environ, PYTHONPATH=str(BENCH)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        found: dict[str, str] = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return dict.fromkeys(modules, f"the import probe failed: {probe.stderr.strip()[-500:]}")
    return found


# Imports each system module named on its command line in one fresh interpreter (cwd bench/); prints
# {module: "ExceptionType: text"} for those that fail. The modules only build their (lazy) clients.
PROBE = """
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module("systems." + name)
    except BaseException as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def run_all(entries: list[Entry], plan: dict[str, int], reps: int, results: dict[str, Any], args: Any) -> None:
    """Every scenario, repetition and system, interleaved; saves the JSON after each scenario."""
    workdir = Path(tempfile.mkdtemp(prefix="taskmill-bench-"))
    begun = time.monotonic()
    try:
        for scenario in SCENARIOS:
            todo = [e for e in entries if scenario in TABLE_SCENARIOS[e.table]]
            for rep in range(reps):
                for entry in todo:
                    n = size(entry, scenario, plan)
                    if entry.module.startswith("taskmill"):
                        state = source_state()
                        if _digest(state) != _digest(results["meta"]["source_states"][-1]):
                            results["meta"]["source_states"].append(state)
                            log(f"WARNING: taskmill's source changed during the run, now {state}")
                    if scenario == "enqueue_bulk" and (label := without_batches(results, entry)) is not None:
                        result = {"na": True, "reason": "no batch API", "system": label}  # no process to start
                    else:
                        result = run_one(entry, scenario, n, workdir, f"{entry.key}-{scenario}-{rep}", args.quick)
                    if entry.module.startswith("taskmill"):
                        result["source"] = results["meta"]["source_states"][-1]
                    runs = results["runs"].setdefault(entry.key, {}).setdefault(scenario, {"reps": []})
                    runs["reps"].append(result)
                    log(
                        f"[{time.monotonic() - begun:6.0f} s] {scenario:<12} rep {rep + 1}/{reps} {entry.key:<22} "
                        + _brief(result)
                    )
            for entry in todo:
                aggregate(results["runs"][entry.key][scenario])
            save(results, args.json)  # a partial run still leaves its figures
    finally:
        kill_tree()
        _flush()
        # Leave the PostgreSQL schemas dropped and the RabbitMQ vhost empty (one reset per backend).
        for module in {servers.backend_of(e.module): e.module for e in entries}.values():
            with contextlib.suppress(Exception):
                servers.reset(module)
        shutil.rmtree(workdir, ignore_errors=True)


def without_batches(results: dict[str, Any], entry: Entry) -> dict[str, Any] | None:
    """The label an earlier run of ``entry`` reported, if it says the system has no batch API."""
    for scenario in results["runs"].get(entry.key, {}).values():
        for rep in scenario["reps"]:
            if "system" in rep:
                return rep["system"] if not rep["system"].get("bulk_api") else None
    return None


def save(results: dict[str, Any], path: Path) -> None:
    results["labels"] = {
        key: next((r["system"] for s in runs.values() for r in s["reps"] if "system" in r), {})
        for key, runs in results["runs"].items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


def aggregate(runs: dict[str, Any]) -> None:
    """Medians and ranges of one system's repetitions of one scenario, and its correctness totals."""
    for field in ("value", "p50", "p95", "p99", "rss_mb", "pss_mb"):
        summary = summarize(runs["reps"], field)
        if summary:
            runs[field] = summary
    runs["lost"] = sum(r.get("lost", 0) for r in runs["reps"])
    runs["dup"] = sum(r.get("dup", 0) for r in runs["reps"])
    runs["errors"] = [r["error"] for r in runs["reps"] if "error" in r]
    runs["na"] = all(r.get("na") for r in runs["reps"])
    runs["n"] = runs["reps"][0].get("n")


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"FAILED: {result['error'][:200]}"
    if result.get("na"):
        return "n/a"
    parts = []
    if "value" in result:
        parts.append(f"{result['value']:,.0f}/s")
    if "p50" in result:
        parts.append(f"p50 {result['p50']:.2f} p99 {result['p99']:.2f} ms, RSS {result['rss_mb']:.1f} MB")
    if "lost" in result:
        parts.append(f"lost {result['lost']} dup {result['dup']}")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
