"""The public surface is pinned: adding or removing a name is a deliberate change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import taskmill
from taskmill import errors

EXPECTED = {
    "Actor", "ActorNotFound", "ActorOptions", "App", "ArgumentsError", "BrokerError", "BrokerUnavailable",
    "ConfigurationError", "DecodeError", "EncodeError", "InvalidOptionError", "LeaseLost", "Message",
    "MessageError", "Middleware", "PayloadTooLarge", "Retry", "Settings", "TaskmillError", "TimeLimitExceeded",
    "UnknownOptionError", "Worker", "__version__", "actor", "default_app", "Group", "Pipeline", "ResultError",
    "ResultMissing", "ResultTimeout", "TaskFailed", "group", "pipeline",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(taskmill.__all__) == EXPECTED
    for name in taskmill.__all__:
        assert hasattr(taskmill, name)


def test_every_error_is_a_taskmill_error() -> None:
    for name in errors.__all__:
        error = getattr(errors, name)
        if name != "Retry":
            assert issubclass(error, taskmill.TaskmillError), name
    assert not issubclass(taskmill.Retry, taskmill.TaskmillError)


def test_python_dash_m_taskmill_is_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "taskmill", "--help"], capture_output=True, text=True, check=True)
    assert "worker" in result.stdout
    assert "dead" in result.stdout


def test_package_ships_py_typed() -> None:
    assert (Path(taskmill.__file__).parent / "py.typed").exists()
