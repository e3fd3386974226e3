"""The code stays lint-clean, formatted and strictly typed; Actor[P, R] type-checks send()."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check_passes() -> None:
    result = _run("ruff", "check", "src", "tests", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = _run("ruff", "format", "--check", "src", "tests", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes_on_the_package() -> None:
    result = _run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


TYPED_USAGE = """
import taskmill

app = taskmill.App("memory://")

@app.actor
def add(a: int, b: int) -> int:
    return a + b

message: taskmill.Message = add.send(1, 2)
total: int = add(1, 2)
add.send("one", 2)
add.send(1)
"""


def test_send_is_type_checked_against_the_actor_signature(tmp_path: Path) -> None:
    sample = tmp_path / "usage.py"
    sample.write_text(TYPED_USAGE)
    result = _run("mypy", "--strict", "--no-incremental", str(sample))
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert any('"add" has incompatible type "str"' in e or 'Argument 1 to "send"' in e for e in errors), result.stdout
    assert any("Missing positional argument" in e for e in errors), result.stdout
    assert len(errors) == 2, result.stdout


@pytest.mark.parametrize("module", sorted((ROOT / "src" / "taskmill").rglob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(module: Path) -> None:
    assert len(module.read_text().splitlines()) <= 400, f"{module} is over 400 lines"
