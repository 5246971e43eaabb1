"""The app's background jobs: Dash's ``DiskcacheManager``, plus a message when a job dies without a result.

Dash runs a background callback (an analysis, a circuit score or ablation) in a process forked from the
server. When that process ends without storing a result (killed by the system for memory, a crash in
native code), Dash quietly puts the page back as it was: the Run button returns and nothing says why.
:class:`JobManager` notices such a job on the page's next poll and hands Dash an error instead, which the
callback's ``on_error`` (:func:`job_error`) shows as a one-line message. A job the page itself stopped
(Cancel, a newer run of the same callback) is recorded when it is terminated and is not reported.

A job's process runs :func:`job_main`: it knows itself as a job (:func:`in_job`; under gunicorn a worker
process is no job, though it too is not the process that imported this module), computes with one
torch thread, since OpenMP's thread pool does not survive the fork, and has a progress-bar lock of its own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import dash
import torch
from tqdm import tqdm as tqdm_std
from tqdm.auto import tqdm as tqdm_auto

#: Cache key prefix of the jobs this server terminated on purpose (cancelled or superseded).
_TERMINATED = "dtinterp-terminated-job-"

_in_job = False


def in_job() -> bool:
    """Whether this process is a background job (started through :func:`job_main`)."""
    return _in_job


def job_main(job_fn: Callable[..., Any], *args: Any) -> None:
    """The body of a job's process: mark it a job, give torch one thread, run ``job_fn(*args)``."""
    global _in_job
    _in_job = True
    torch.set_num_threads(1)  # OpenMP's pool does not survive the fork: torch would hang
    # tqdm's write lock is shared by forked processes by design (its multiprocessing half), and its thread
    # half may be held by a server thread at the fork: a job's bars are its own, so it gets its own lock.
    for bar_class in (tqdm_std, tqdm_auto):
        bar_class.set_lock(threading.RLock())
    job_fn(*args)


class JobManager(dash.DiskcacheManager):
    """A ``DiskcacheManager`` that reports a background job which ended without storing a result."""

    def __init__(self, cache: Any) -> None:
        super().__init__(cache)
        self._procs: dict[int, Any] = {}  # pid -> the multiprocess.Process this server process started
        self._procs_lock = threading.Lock()

    def call_job_fn(self, key: str, job_fn: Callable[..., Any], args: Any, context: Any) -> int:
        """Start the job in a forked process (as Dash does) and keep its handle for its exit status."""
        from multiprocess import Process

        proc = Process(target=job_main, args=(job_fn, key, self._make_progress_key(key), args, context))
        proc.start()
        with self._procs_lock:
            for pid in [p for p, q in self._procs.items() if q.exitcode is not None]:
                del self._procs[pid]  # reaped earlier jobs
            self._procs[proc.pid] = proc
        return proc.pid

    def terminate_job(self, job: Any) -> None:
        """Terminate ``job`` and remember that it was stopped on purpose (so it is never reported)."""
        if job is not None:
            self.handle.set(f"{_TERMINATED}{int(job)}", True, expire=3600)
        super().terminate_job(job)

    def get_result(self, key: str, job: Any) -> Any:
        """The job's result; an error naming the cause when its process ended without one."""
        result = super().get_result(key, job)
        if result is not self.UNDEFINED or not job or self.job_running(job):
            return result
        # The process has ended: it may have stored its result just after the first read.
        result = super().get_result(key, job)
        if result is not self.UNDEFINED or self.handle.get(f"{_TERMINATED}{int(job)}"):
            return result
        self.handle.set(f"{_TERMINATED}{int(job)}", True, expire=3600)  # reported once
        return {"background_callback_error": {"msg": died_message(self.exit_code(int(job))), "tb": ""}}

    def exit_code(self, pid: int) -> int | None:
        """Exit code of a job this process started (negative: the signal that killed it); None if unknown."""
        with self._procs_lock:
            proc = self._procs.pop(pid, None)
        if proc is None:
            return None  # started by another server worker
        proc.join(timeout=1)
        return proc.exitcode


def died_message(code: int | None) -> str:
    """One line on a job that ended without a result, given its exit code (None: unknown)."""
    if code is None:
        how = "its exit status is unknown"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"killed by {name}" + (
            ", often the system running out of memory" if -code == signal.SIGKILL else ""
        )
    else:
        how = f"exit code {code}"
    return f"the run's worker process ended without a result ({how}); nothing was computed: run it again"


def job_error(message_id: str) -> Callable[[Exception], None]:
    """``on_error`` of a background callback: its one-line failure goes to ``message_id``'s children."""

    def on_error(exc: Exception) -> None:
        text = str(exc).removeprefix("An error occurred inside a background callback: ").strip()
        text = text.splitlines()[0] if text else type(exc).__name__
        dash.set_props(message_id, {"children": f"The run failed: {text}"})

    return on_error


__all__ = ["JobManager", "died_message", "in_job", "job_error", "job_main"]
