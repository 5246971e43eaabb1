"""The background-job manager: a job that dies without a result is reported once, with its cause."""

from __future__ import annotations

import os
import signal
import threading
import time

import diskcache
import pytest
import torch
from tqdm.auto import tqdm

from dash_app.jobs import JobManager, died_message, in_job


def _finish(fn, manager: JobManager, key: str) -> int:
    """Run ``fn`` as a background job under ``key`` and wait until its process has ended."""
    pid = manager.call_job_fn(key, manager.make_job_fn(fn, progress=False), [], {})
    deadline = time.monotonic() + 30
    while manager.job_running(pid):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.02)
    return pid


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_3() -> None:
    os._exit(3)


def _answer() -> int:
    return 42


def _what_the_job_sees() -> list:
    tqdm(total=1, disable=True).close()  # blocks if the job shares the server's progress-bar lock
    return [in_job(), torch.get_num_threads()]


@pytest.fixture()
def manager(tmp_path):
    cache = diskcache.Cache(str(tmp_path / "cache"))
    yield JobManager(cache)
    cache.close()


def test_a_finished_job_gives_its_result(manager):
    pid = _finish(_answer, manager, "k1")
    assert manager.get_result("k1", pid) == 42


def test_a_job_knows_itself_as_a_job_computes_with_one_thread_and_owns_its_bar_lock(manager):
    threads = torch.get_num_threads()
    held, release = threading.Event(), threading.Event()

    def server_thread() -> None:  # a server thread drawing a progress bar when the job forks
        with tqdm.get_lock():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=server_thread)
    thread.start()
    torch.set_num_threads(2)  # as a server computing with two threads
    try:
        assert held.wait(10)
        pid = _finish(_what_the_job_sees, manager, "k0")
    finally:
        torch.set_num_threads(threads)
        release.set()
        thread.join()
    assert manager.get_result("k0", pid) == [True, 1]
    assert not in_job()


@pytest.mark.parametrize(("fn", "cause"), [(_kill_self, "killed by SIGKILL"), (_exit_3, "exit code 3")])
def test_a_job_that_dies_is_reported_once_with_its_cause(manager, fn, cause):
    pid = _finish(fn, manager, "k2")
    error = manager.get_result("k2", pid)
    msg = error["background_callback_error"]["msg"]
    assert cause in msg and "ended without a result" in msg and "\n" not in msg
    assert manager.get_result("k2", pid) is manager.UNDEFINED  # a second poll reports nothing more


def test_a_job_stopped_on_purpose_is_not_reported(manager):
    pid = manager.call_job_fn("k3", manager.make_job_fn(lambda: time.sleep(30), progress=False), [], {})
    manager.terminate_job(pid)
    assert not manager.job_running(pid)
    assert manager.get_result("k3", pid) is manager.UNDEFINED


def test_died_message_without_a_known_status():
    assert "exit status is unknown" in died_message(None)
    assert "SIGSEGV" in died_message(-signal.SIGSEGV)
