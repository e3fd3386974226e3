"""Worker processes are fresh interpreters: they hold only stdin (/dev/null), stdout and stderr of
what their supervisor inherited, so a pipe handed to the supervisor closes when the supervisor does."""

from __future__ import annotations

import os
import signal

from harness import Workers


def open_pipes(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_a_worker_process_holds_no_descriptor_its_supervisor_inherited(workers: Workers) -> None:
    read_end, write_end = os.pipe()
    try:
        pipe = f"pipe:[{os.fstat(write_end).st_ino}]"
        worker = workers.worker(pass_fds=(write_end,))
        (child,) = worker.wait_children(1)
        worker.wait_for_output("worker process started")
        assert pipe in open_pipes(worker.pid), "the supervisor did not inherit the pipe: the test proves nothing"
        assert pipe not in open_pipes(child)
        assert os.readlink(f"/proc/{child}/fd/0") == os.devnull
        os.close(write_end)
        write_end = -1
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.output()
        os.set_blocking(read_end, False)  # EOF if nobody holds the write end; BlockingIOError otherwise
        assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
