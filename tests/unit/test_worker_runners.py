"""The worker's handler threads (transport/worker.py `Runners`): reused, grown when all are busy, ended when idle."""
from __future__ import annotations

import threading
import time

from jobbie.transport.worker import Runners


def wait_until(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_an_idle_runner_takes_the_next_job_instead_of_a_new_thread():
    ran, names = [], []
    done = threading.Event()

    def run(job):
        ran.append(job)
        names.append(threading.current_thread().name)
        done.set()

    runners = Runners(run)
    for job in range(20):
        done.clear()
        runners.submit(job)
        assert done.wait(5)
        assert wait_until(lambda: runners._idle == 1)
    assert ran == list(range(20))
    assert runners.started == 1 and set(names) == {"jobbie-runner-1"}


def test_a_busy_or_stuck_runner_does_not_hold_up_the_next_job():
    release = threading.Event()
    seen = []

    def run(job):
        seen.append(job)
        if job == "stuck":
            release.wait(10)

    runners = Runners(run)
    runners.submit("stuck")
    runners.submit("next")
    assert wait_until(lambda: "next" in seen)
    assert runners.started == 2
    release.set()


def test_runners_idle_past_their_time_end_and_new_jobs_still_run():
    seen, threads = [], []

    def run(job):
        seen.append(job)
        threads.append(threading.current_thread())

    runners = Runners(run, idle_s=0.05)
    runners.submit(1)
    assert wait_until(lambda: seen == [1])
    assert wait_until(lambda: not threads[0].is_alive())  # idle past 0.05 s: it ended
    assert runners._idle == 0
    runners.submit(2)
    assert wait_until(lambda: seen == [1, 2])
    assert runners.started == 2 and threads[1] is not threads[0]
