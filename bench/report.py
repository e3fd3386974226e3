"""Render bench results (the JSON run.py writes) as docs/benchmarks.md.

``python bench/report.py [bench/results/latest.json]`` re-renders without re-running. Anything in
the existing docs/benchmarks.md after the KEEP marker (hand-written analysis) is carried over.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KEEP = "<!-- Everything below this line is hand-written and kept when the bench re-renders the page. -->"

THROUGHPUT = ["enqueue_seq", "enqueue_bulk", "drain", "drain_io"]
TITLES = {
    "redis": "Redis: one worker process x 8 threads (or the nearest equivalent)",
    "redis-best": "Redis: each system's best configuration on these cores",
    "rabbitmq": "RabbitMQ: one worker process x 8 threads (or the nearest equivalent)",
    "postgres": "PostgreSQL: one worker process x 8 threads (or the nearest equivalent)",
    "sqlite": "Embedded SQLite",
    "reference": "Reference: no framework",
}


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def cell(run: dict[str, Any] | None, field: str, fmt: Any) -> str:
    if run is None:
        return "-"
    if run.get("na"):
        return "N/A"
    summary = run.get(field)
    if not summary:
        return "**FAILED**" if run.get("errors") else "-"
    text = fmt(summary["median"])
    if summary["n"] > 1:
        text += f" <sub>{fmt(summary['min'])}-{fmt(summary['max'])}</sub>"
    if run.get("errors"):
        text += f" **({len(run['errors'])} failed)**"
    return text


def correctness(runs: dict[str, Any]) -> str:
    lost = sum(r.get("lost", 0) for r in runs.values())
    dup = sum(r.get("dup", 0) for r in runs.values())
    if lost or dup:
        return f"**⚠ LOST {lost} / DUP {dup}**"
    return "0 / 0"


def system_table(results: dict[str, Any], table: str) -> list[str]:
    meta = results["meta"]["systems"]
    keys = [k for k, v in meta.items() if v["table"] == table and k in results["runs"]]
    if not keys:
        return []
    lines = [
        (
            "| system | worker | enqueue/s | bulk enqueue/s | drain/s (no-op) | I/O drain/s (10 ms) "
            "| latency p50 ms | p95 ms | p99 ms | idle RSS MB | idle PSS MB | lost / dup |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for key in keys:
        runs = results["runs"][key]
        info = results.get("labels", {}).get(key, {})
        lat = runs.get("latency")
        seq, bulk = cell(runs.get("enqueue_seq"), "value", fmt_rate), cell(runs.get("enqueue_bulk"), "value", fmt_rate)
        lines.append(
            f"| {key} | {info.get('concurrency', '')} | {seq} | {bulk} "
            f"| {cell(runs.get('drain'), 'value', fmt_rate)} | {cell(runs.get('drain_io'), 'value', fmt_rate)} "
            f"| {cell(lat, 'p50', fmt_ms)} | {cell(lat, 'p95', fmt_ms)} | {cell(lat, 'p99', fmt_ms)} "
            f"| {cell(lat, 'rss_mb', lambda v: f'{v:.1f}')} | {cell(lat, 'pss_mb', lambda v: f'{v:.1f}')} "
            f"| {correctness(runs)} |"
        )
    return lines


def skipped(results: dict[str, Any], table: str) -> list[str]:
    """One line per system of this table that did not run, with the reason (run.py's preflight)."""
    meta = results["meta"]["systems"]
    return [
        f"- **{key} skipped**: {reason}"
        for key, reason in results.get("skipped", {}).items()
        if meta.get(key, {}).get("table") == table
    ]


def paired(ours: dict[str, Any], theirs: dict[str, Any], field: str) -> tuple[float, float, float] | None:
    """Ratio of medians, and the range of per-repetition ratios (repetitions ran side by side)."""
    if not ours.get(field) or not theirs.get(field):
        return None
    a = [r.get(field) for r in ours["reps"]]
    b = [r.get(field) for r in theirs["reps"]]
    pairs = [x / y for x, y in zip(a, b, strict=False) if x is not None and y]
    ratio = ours[field]["median"] / theirs[field]["median"]
    return ratio, min(pairs, default=ratio), max(pairs, default=ratio)


def ratio_cell(value: tuple[float, float, float] | None, higher_is_better: bool) -> str:
    if value is None:
        return "-"
    ratio, low, high = value
    better = ratio > 1 if higher_is_better else ratio < 1
    text = f"{ratio:.2f}x"
    if abs(high - low) > 0.005:
        text += f" <sub>{low:.2f}-{high:.2f}</sub>"
    return text + (" ✓" if better else "")


def ratio_table(results: dict[str, Any], table: str) -> list[str]:
    runs = results["runs"]
    keys = [k for k, v in results["meta"]["systems"].items() if v["table"] == table and k in runs]
    ours_keys = [k for k in keys if k.startswith("taskmill")]
    peers = [k for k in keys if not k.startswith("taskmill")]
    if not ours_keys or not peers:
        return []
    lines = [
        (
            "Ratios taskmill / peer, from the medians (the small range is the per-repetition ratios: the "
            "repetitions ran side by side). Throughput: above 1 means taskmill is faster; latency and memory: "
            "below 1 means taskmill is lower. ✓ marks where taskmill is better."
        ),
        "",
        "| taskmill / peer | enqueue | bulk enqueue | drain | I/O drain | latency p50 | p99 | idle RSS | idle PSS |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for ours_key in ours_keys:
        ours = runs[ours_key]
        for peer in peers:
            theirs = runs[peer]
            cells = [ratio_cell(_pair(ours, theirs, s, "value"), True) for s in THROUGHPUT]
            cells += [ratio_cell(_pair(ours, theirs, "latency", f), False) for f in ("p50", "p99", "rss_mb", "pss_mb")]
            lines.append(f"| {ours_key} / {peer} | " + " | ".join(cells) + " |")
    return lines


def _pair(ours: dict[str, Any], theirs: dict[str, Any], scenario: str, field: str) -> Any:
    if scenario not in ours or scenario not in theirs:
        return None
    return paired(ours[scenario], theirs[scenario], field)


def reference(results: dict[str, Any]) -> list[str]:
    lines = []
    bench = results.get("redis_benchmark", {})
    if bench.get("error"):
        lines.append(f"redis-benchmark: {bench['error']}")
    elif bench:
        lines.append(f"`{bench['command']}` (requests/s, median of {results['reps']}):")
        lines.append("")
        lines.append("| command | requests/s |")
        lines.append("|---|--:|")
        for name, summary in bench.items():
            if isinstance(summary, dict) and summary:
                lines.append(f"| {name} | {cell({name: summary}, name, fmt_rate)} |")
    runs = results["runs"]
    ceiling = runs.get("ceiling", {}).get("drain", {})
    if ceiling.get("value"):
        lines.append("")
        lines.append(
            "The ceiling consumer (bench/systems/ceiling_redis.py) drains the same JSON envelopes with one "
            "process and one thread: a Lua script pops and leases 100 ids at a time, each body is decoded "
            "with orjson and its function called (the same bookkeeping as every task), and one pipeline "
            "deletes the batch."
        )
        lines.append("")
        lines.append("| configuration | drain/s | fraction of the ceiling |")
        lines.append("|---|--:|--:|")
        lines.append(f"| ceiling | {cell(ceiling, 'value', fmt_rate)} | 100% |")
        for key in ("taskmill", "taskmill-2p", "dramatiq", "huey", "celery"):
            drain = runs.get(key, {}).get("drain")
            if drain and drain.get("value"):
                fraction = paired(drain, ceiling, "value")
                assert fraction is not None
                spread = f" <sub>{fraction[1]:.0%}-{fraction[2]:.0%}</sub>" if fraction[2] - fraction[1] > 0.005 else ""
                lines.append(f"| {key} | {cell(drain, 'value', fmt_rate)} | {fraction[0]:.0%}{spread} |")
    return lines


def failures(results: dict[str, Any]) -> list[str]:
    lines = []
    for key, runs in results["runs"].items():
        for scenario, run in runs.items():
            for i, rep in enumerate(run.get("reps", [])):
                if "error" in rep:
                    lines.append(f"- **{key} / {scenario} / repetition {i + 1}**: {rep['error'][:600]}")
    return lines


INTRO = """\
# Benchmarks

taskmill against Dramatiq, Celery, RQ, Huey and Taskiq on the same Redis, against Dramatiq and
Celery on the same RabbitMQ, against Procrastinate on the same PostgreSQL, and on the embedded
SQLite brokers, all in the same run, plus a framework-free ceiling. Reproduce with:

```bash
bash bench/run.sh            # full run, 30-60 minutes; --quick is a 2-minute smoke test
```

It creates `bench/.venv`, installs the pinned peers (`bench/requirements.txt`) and taskmill from
this checkout, and writes this page and `bench/results/latest.json`. It needs:

- Redis on 127.0.0.1:6379: every system's bookkeeping, and the Redis brokers (db 14 only, flushed
  between runs);
- RabbitMQ on 127.0.0.1:5672 with guest/guest, and `rabbitmqctl` on the PATH (or
  `BENCH_RABBITMQCTL`, e.g. `docker exec rabbitmq rabbitmqctl`): the bench creates a vhost `bench`
  (guest gets every permission there) and deletes every queue in it between runs;
- PostgreSQL on 127.0.0.1:5432, user `postgres` without a password, database `test`: taskmill uses
  the schema `taskmill_bench` and Procrastinate `procrastinate_bench`, dropped between runs.

Set `BENCH_POSTGRES_URL` or `BENCH_AMQP_URL` to use other servers. Runs share these servers, so a
second `bench/run.sh` waits for the first to end.

A system whose server is not reachable, or whose module does not import, is skipped and listed
with the reason. `--only taskmill,huey` runs a subset (`--only taskmill-rabbitmq,dramatiq-rabbitmq`,
`--only taskmill-postgres,procrastinate`; keys in `bench/systems/__init__.py`);
`bench/.venv/bin/python bench/profile_worker.py taskmill` profiles a worker while it drains;
`bench/.venv/bin/python bench/inprocess.py drain|iodrain|latency` runs one in-process, for A/B work on the hot path.

## This run

- Date: {date}; command: `{command}`{quick}
- Machine: {nproc} cores ({cpu}), shared and noisy; load average {load_start} at the start,
  {load_end} at the end
- Python {python}, servers: {servers}; taskmill at {commit}
- Packages: {packages}
- Each figure is the median of {reps} repetition{plural}{spread}; the run took {minutes:.0f} minutes.
- Sizes: {seq:,} sequential sends; {bulk:,} bulk sends in batches of 1,000; {drain:,} no-op messages
  drained; {io:,} messages that sleep 10 ms; {latency:,} latency messages{scaled}
"""


def render(results: dict[str, Any], keep_from: Path | None = None) -> str:
    meta, plan = results["meta"], results["plan"]
    reps = results["reps"]
    quick = " (**quick mode: smoke-test sizes, not comparable figures**)" if results.get("quick") else ""
    spread = " with the min-max in small print" if reps > 1 else ""
    out = INTRO.format(
        date=meta["date"],
        command=meta["command"],
        quick=quick,
        nproc=meta["nproc"],
        cpu=meta["cpu"],
        load_start=_load(meta.get("loadavg_start")),
        load_end=_load(meta.get("loadavg_end")),
        python=meta["python"],
        servers=", ".join(f"{k} {v}" for k, v in meta.get("servers", {"Redis": meta["redis_server"]}).items()),
        commit=meta["taskmill_commit"],
        packages=", ".join(f"{k} {v}" for k, v in meta["packages"].items()),
        reps=reps,
        plural="s" if reps > 1 else "",
        spread=spread,
        minutes=meta.get("duration_s", 0) / 60,
        seq=plan["enqueue_seq"],
        bulk=plan["enqueue_bulk"],
        drain=plan["drain"],
        io=plan["drain_io"],
        latency=plan["latency"],
        scaled=_scaled(results),
    ).splitlines()
    states = meta.get("source_states", [])
    if len({state.rsplit("src digest ", 1)[-1] for state in states}) > 1:
        out += [
            "",
            "**Warning: taskmill's source changed while this run went on, so its figures mix versions: "
            + " -> ".join(states)
            + ". Re-run on a quiet tree for comparable figures.**",
        ]
    out.append("")
    for table in ("redis", "redis-best", "rabbitmq", "postgres", "sqlite", "reference"):
        lines = system_table(results, table) if table != "reference" else []
        ratios = ratio_table(results, table)
        if table == "reference":
            lines = reference(results)
            if results["runs"].get("ceiling"):
                lines += ["", *system_table(results, "reference")]
        not_run = skipped(results, table)
        if not lines and not not_run:
            continue
        out += [f"## {TITLES[table]}", ""]
        if lines:
            out += [*lines, ""]
        if not_run:
            out += [*not_run, ""]
        if ratios:
            out += [*ratios, ""]
    problems = failures(results)
    if problems:
        out += ["## Failures", "", *problems, ""]
    out += METHOD.splitlines()
    kept = _kept(keep_from)
    out += ["", KEEP, *([kept] if kept else [])]
    return "\n".join(out).rstrip() + "\n"


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _scaled(results: dict[str, Any]) -> str:
    notes = []
    for key, runs in results["runs"].items():
        for scenario in ("drain", "drain_io"):
            n = runs.get(scenario, {}).get("n")
            if n and n != results["plan"][scenario]:
                notes.append(f"{key} {scenario.replace('_', ' ')} {n:,}")
    return (" (fewer for the slowest, to keep the run short: " + ", ".join(notes) + ")") if notes else "."


def _kept(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    text = path.read_text()
    return text.split(KEEP, 1)[1].strip("\n") if KEEP in text else ""


METHOD = """\
## How it measures

- Every system runs the same three task bodies (`bench/systems/base.py`): each does one pipelined
  round trip to Redis db 14 (SADD of the message's unique id, INCR of an execution counter), so the
  bookkeeping costs every system the same, whatever its broker (RabbitMQ and PostgreSQL systems
  keep it in Redis too). The I/O task sleeps 10 ms first; the latency task pushes
  its start time minus the send time it received as an argument. The bodies talk to Redis on a
  socket per thread, commands packed and replies parsed by hiredis, not through redis-py: importing
  redis-py would add ~22 MB to the idle memory of every system that does not import it itself
  (taskmill, and every RabbitMQ, PostgreSQL and SQLite system).
- **enqueue/s**: one producer, N sequential sends (`actor.send`, `task.delay`, `queue.enqueue`,
  `await task.kiq`), no worker running. **bulk enqueue/s**: the system's batch API in batches of
  1,000 (N/A when it has none: Dramatiq's pipelined `broker.enqueue` is not public, Huey's
  `task.map` and Taskiq send one at a time).
- **drain/s**: N messages are queued first, then one worker is started; the rate is (N - 1) / (time
  the last message finished - time the first finished), so start-up time is not counted. **I/O
  drain/s** is the same with tasks that sleep 10 ms (8 threads allow at most 800/s).
- **latency**: with the worker running and idle, messages are sent one at a time, each 5 ms after
  the previous one started; the percentiles are nearest-rank.
- **idle RSS**: the sum of RSS over the worker's processes (taskmill: the supervisor and its worker
  process; Dramatiq: the main and the worker process; Celery prefork: the main and its children)
  after one message and 3 s idle. RSS counts a shared page (the interpreter, the C extensions, the
  libraries) once in every process that maps it, so a supervisor or a second process pays for it
  again; **idle PSS** divides each shared page among the processes sharing it, which is what the
  system as a whole costs. USS is in the JSON.
- **lost / dup**: after every drain and latency run the bench waits 1 s, then lost = N - distinct ids
  that ran and dup = executions - distinct ids, summed over every run of the system. Any non-zero
  count is flagged in the table.
- Every repetition runs in its own subprocess with a timeout; worker process trees are killed at the
  end of each (the driver is a child subreaper, so re-parented grandchildren are found too). A
  system that fails is listed under Failures with its error, never dropped.
- Each system runs with its own defaults: log levels (taskmill, RQ and Huey log a line per message
  at their default INFO level, Procrastinate two; Dramatiq and Celery log none), delivery semantics
  (on Redis, Celery acks on receipt by default and Huey on dequeue, so neither redelivers after a
  crash; taskmill, Dramatiq and Taskiq on streams ack after the task), and no result backend
  anywhere.
- RQ has no threads: its default worker runs one job at a time and forks a work horse per job.
- RabbitMQ: every system waits for publisher confirms (taskmill by default, Dramatiq with
  `confirm_delivery=True`, Celery with `confirm_publish`) and acks after the task (Celery with
  `task_acks_late` and `worker_prefetch_multiplier=1`), so the three promise the same delivery.
  Before each run every queue of the `bench` vhost is deleted.
- PostgreSQL: the `taskmill_bench` and `procrastinate_bench` schemas are dropped before each run.
  taskmill creates its tables on the run's first send, Procrastinate's are applied when the
  producer starts; both outside every timed figure (the sequential and bulk figures start after a
  first send, the drain after the queue is filled). Procrastinate runs sync tasks in threads, at
  most `--concurrency 8` at once, and its `defer` takes keyword arguments only.
- The scenarios are interleaved (scenario, then repetition, then system), so a noisy minute on this
  shared machine falls on every system alike; read the ratios rather than the absolute figures.
"""


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    target = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    target.write_text(render(json.loads(path.read_text()), keep_from=target))


if __name__ == "__main__":
    main()
