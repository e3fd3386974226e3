"""The worker's banner says where it reads from, what it serves, how wide it runs and which actors it found."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Workers


def banner_of(output: str) -> list[str]:
    lines = output.splitlines()
    start = lines.index("taskmill worker")
    return lines[start : start + 5]


def test_banner_names_the_absolute_broker_path_queues_width_and_actors(workers: Workers, tmp_path: Path) -> None:
    worker = workers.worker(processes=2, threads=3, env={"TASKMILL_BROKER_URL": "sqlite:///relative.db"})
    worker.wait_for_output("worker process started")

    assert banner_of(worker.output()) == [
        "taskmill worker",
        f"  broker:  sqlite:///{(tmp_path / 'relative.db').resolve()}",
        "  queues:  default, poison",
        "  workers: 2 processes x 3 threads",
        "  actors:  crash, digest, group_done, increment, record, square",
    ]
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_banner_shows_the_chosen_queues_and_burst_mode(workers: Workers) -> None:
    worker = workers.worker("--burst", "--queues", "poison, extra", threads=2)
    assert worker.wait(30) == 0
    banner = banner_of(worker.output())
    assert banner[2:4] == ["  queues:  poison, extra", "  workers: 1 processes x 2 threads (burst)"]
