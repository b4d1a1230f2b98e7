"""The Python worker runtime.

    from jobbie.transport.worker import Worker

    def send_email(job):
        job.progress(50)
        return {"sent": True}

    Worker({"emails": send_email}, concurrency=4).run()

A handler receives a `Job` and returns the result (the job is acked with it)
or raises (the attempt fails; the server retries with backoff or marks the
job dead). The runtime:
- fetches with long-polls, never more jobs than it has free slots;
- heartbeats every in-flight job in one request per interval, carrying
  progress, checkpoints and usage, and learns of cancellation (`job.cancelled`,
  or `job.check()` raising `Cancelled`) and lost leases;
- presents the attempt as a lease token, so a worker that lost its lease
  cannot complete a job someone else now holds;
- retries on RESOURCE_EXHAUSTED / UNAVAILABLE (through `Client.call`);
- tells handlers when a budget ran out (`job.budget_exceeded`; `job.check()` and
  `job.check_budget()` raise `BudgetExceeded`): a handler that lets it propagate
  pauses the job, which the server holds with its latest checkpoint;
- runs agent loops: a handler of an agent job returns `Continue(checkpoint,
  result)`, `Done(result)` (or a plain value) or `Hold(reason, payload)`, and
  sees `job.iteration` and `job.approval`; any handler may `job.hold(...)`;
- enforces time limits: a handler still running when the attempt's limit is
  reached (enqueue's `timeout_ms`, else the task's `timeout` in `timeouts`)
  has its attempt failed at once (`timeout after N s`) and its slot freed.
  Python cannot kill a thread, so the handler runs on unheartbeated, and
  `job.check()` raises `TimedOut` for it; what it returns later is ignored;
- on SIGTERM/SIGINT drains: it stops fetching, lets running jobs finish for
  up to `drain_timeout` seconds, and fails the rest with their checkpoint so
  the next attempt resumes from it.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback

from . import codec
from .client import Client
from .errors import JobbieError, from_wire

log = logging.getLogger("jobbie.worker")


def _log_to_stderr_unless_configured():
    """Give the worker's log lines a home on stderr when the application set up no logging."""
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


class Cancelled(Exception):
    """Raised by `Job.check()` when the job was cancelled or its lease was lost."""


class TimedOut(Cancelled):
    """The attempt ran past its time limit (enqueue's `timeout_ms`, else the task's `timeout`).

    The worker has already failed the attempt (`timeout after N s`) and freed the slot; `job.check()`
    raises this so a handler that checks can stop. Python cannot kill the handler's thread: one that
    never checks runs on, and whatever it returns or raises afterwards is ignored."""


class BudgetExceeded(Exception):
    """Raised by `Job.check()` / `Job.check_budget()` once the server said a budget of the job ran out.

    Save a checkpoint and let it propagate: the worker then fails the attempt with that checkpoint
    and the server holds the job (it does not count as a failed attempt); approval, a raised limit
    or the budget's next window resumes it from the checkpoint."""


class Continue:
    """An agent handler's answer: this iteration is done, go on with `checkpoint` (and record `result`)."""

    def __init__(self, checkpoint=None, result=None):
        self.checkpoint = checkpoint
        self.result = result


class Done:
    """An agent handler's answer: the loop is finished with `result` (a plain return value means the same)."""

    def __init__(self, result=None):
        self.result = result


class Hold(Exception):
    """Hold the job for a person (`reason`, and `payload` for them to see): return it or raise it.

    For an agent job the person's decision comes back in the next iteration's `job.approval`."""

    def __init__(self, reason: str, payload=None, checkpoint=None):
        super().__init__(reason)
        self.reason = reason
        self.payload = payload
        self.checkpoint = checkpoint


class Job:
    """One leased job, as a handler sees it."""

    def __init__(self, data: dict):
        self.id = data["job_id"]
        self.queue = data["queue"]
        self.payload = data["payload"]
        self.attempt = data["attempt"]
        self.max_retries = data["max_retries"]
        self.lease_ms = data["lease_ms"]
        self.tags = data.get("tags") or {}
        self.agent = data.get("agent")
        self.checkpoint = data.get("checkpoint")
        #: The attempt's time limit set by the server (enqueue's timeout_ms), or None.
        self.timeout_ms = data.get("timeout_ms")
        #: Set once the worker failed the attempt for running past its time limit.
        self.timed_out = False
        self._settled = False
        self._slot_freed = False
        #: Agent jobs: the iteration this fetch hands out (from 1), and a person's decision after a hold.
        self.iteration = data.get("iteration")
        self.approval = data.get("approval")
        self.cancelled = False
        self.lost = False
        #: Set when a heartbeat answered that a budget of this job ran out (see BudgetExceeded).
        self.budget_exceeded = False
        self._hold: Hold | None = None
        self._lock = threading.Lock()
        self._dirty: dict = {}

    def progress(self, value):
        """Report progress (any msgpack value); sent with the next heartbeat."""
        with self._lock:
            self._dirty["progress"] = value

    def save_checkpoint(self, value):
        """Store a checkpoint; a later attempt of this job starts with it in `job.checkpoint`."""
        with self._lock:
            self.checkpoint = value
            self._dirty["checkpoint"] = value

    def report_usage(self, **usage):
        """Cumulative usage of this attempt so far (input_tokens, output_tokens, cache_read_tokens,
        cache_write_tokens, model, provider, cost_usd, latency_ms): replaces what was reported
        before. Sent with the next heartbeat, and again with the ack or fail."""
        with self._lock:
            self._usage = {k: v for k, v in usage.items() if v is not None}
            self._dirty["usage"] = self._usage

    def add_usage(self, **usage):
        """Add one call's usage to this attempt's (numbers are summed, model and provider replaced)."""
        with self._lock:
            total = dict(getattr(self, "_usage", None) or {})
        for k, v in usage.items():
            if v is None:
                continue
            total[k] = total.get(k, 0) + v if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        self.report_usage(**total)

    def check(self):
        """Raise `Cancelled` if the job was cancelled or this worker lost its lease (`TimedOut` once
        the attempt ran past its time limit), and `BudgetExceeded` if a budget of the job ran out."""
        if self.timed_out:
            raise TimedOut(f"job {self.id} ran past its time limit")
        if self.cancelled or self.lost:
            raise Cancelled(f"job {self.id} was {'cancelled' if self.cancelled else 'lost'}")
        self.check_budget()

    def check_budget(self):
        """Raise `BudgetExceeded` if the server said a budget of this job ran out."""
        if self.budget_exceeded:
            raise BudgetExceeded(f"a budget of job {self.id} ran out; save a checkpoint and stop")

    def hold(self, reason: str, payload=None):
        """Hold the job for a person once the handler returns (instead of completing it)."""
        self._hold = Hold(reason, payload)

    def _settle(self) -> bool:
        """True for the first caller only: the handler's end and the time limit race for the outcome."""
        with self._lock:
            first, self._settled = not self._settled, True
            return first

    def take_heartbeat(self) -> dict:
        with self._lock:
            entry, self._dirty = dict(self._dirty), {}
        entry["attempt"] = self.attempt
        return entry


#: Encoded bytes of one heartbeat request at most: the server refuses a write over its op cap
#: (1 MiB + 64 KiB by default), so the checkpoints of many jobs go in several heartbeats.
HEARTBEAT_BYTES_MAX = 512 * 1024


def heartbeat_parts(entries: dict, bytes_max: int = HEARTBEAT_BYTES_MAX) -> list[dict]:
    """Split heartbeat entries into requests of at most `bytes_max` encoded bytes (an entry
    larger than that goes alone)."""
    parts, part, size = [], {}, 0
    for job_id, entry in entries.items():
        n = len(codec.encode(entry)) + len(job_id) + 8
        if part and size + n > bytes_max:
            parts.append(part)
            part, size = {}, 0
        part[job_id] = entry
        size += n
    if part:
        parts.append(part)
    return parts


def default_heartbeat_ms(lease_ms: int) -> int:
    """A third of the lease, from 500 ms up to 2 s (a lease under 1.5 s gets 500 ms)."""
    return min(HEARTBEAT_MS_MAX_DEFAULT, max(500, lease_ms // 3))


#: Longest default heartbeat interval: how long a cancel may take to reach a handler.
HEARTBEAT_MS_MAX_DEFAULT = 2000


class Outcomes:
    """Sends the acks and fails of a worker's job threads, several in one frame when they finish together.

    A job thread hands its outcome over and waits for the answer, as if it had called `ack` or `fail`
    itself. One sender thread takes whatever is waiting: one outcome goes as a plain ack or fail;
    several go as one `ack_batch`, and each thread gets its own item's answer (or error). While a
    frame is on the wire the next outcomes gather, so an idle worker adds no delay and a busy one
    makes one round trip for many jobs. A server without ack_batch gets them one by one.
    """

    def __init__(self, client: Client, batch_max: int = 256):
        self.client = client
        self.batch_max = batch_max
        self.batching = True
        self._waiting: list = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="jobbie-outcomes", daemon=True)
        self._thread.start()

    def ack(self, job_id: str, **args) -> dict:
        return self._hand_over("ack", dict(job_id=job_id, **args))

    def fail(self, job_id: str, error: str, **args) -> dict:
        return self._hand_over("fail", dict(job_id=job_id, error=error, **args))

    def _hand_over(self, kind: str, args: dict) -> dict:
        item = [kind, {k: v for k, v in args.items() if v is not None or k == "result"}, threading.Event(), None, None]
        with self._cv:
            closed = self._closed
            if not closed:
                self._waiting.append(item)
                self._cv.notify()
        if closed:
            self._send([item])  # after the drain: straight from this thread
        item[2].wait()
        if item[4] is not None:
            raise item[4]
        return item[3]

    def close(self):
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _loop(self):
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if not self._waiting:
                    return
                items, self._waiting = self._waiting[:self.batch_max], self._waiting[self.batch_max:]
            try:
                self._send(items)
            except BaseException as exc:  # never leave a job thread waiting
                for item in items:
                    if not item[2].is_set():
                        item[4] = exc
                        item[2].set()

    def _send(self, items: list):
        if len(items) > 1 and self.batching:
            acks = [item for item in items if item[0] == "ack"]
            fails = [item for item in items if item[0] == "fail"]
            try:
                answer = self.client.ack_batch([i[1] for i in acks], [i[1] for i in fails])
            except JobbieError as exc:
                if exc.reason != "unknown_op":
                    for item in items:
                        item[4] = exc
                        item[2].set()
                    return
                self.batching = False  # an older server: one by one from now on
            else:
                for item, result in zip(acks + fails, answer["acks"] + answer["fails"]):
                    if "ok" in result:
                        item[3] = result["ok"]
                    else:
                        item[4] = from_wire(result["err"])
                    item[2].set()
                return
        for item in items:
            kind, args = item[0], dict(item[1])
            try:
                if kind == "ack":
                    item[3] = self.client.ack(args.pop("job_id"), **args)
                else:
                    item[3] = self.client.fail(args.pop("job_id"), args.pop("error"), **args)
            except JobbieError as exc:
                item[4] = exc
            item[2].set()


class Runners:
    """The threads that run handlers, kept for the next job instead of one new thread per job.

    Starting a thread waits for it to run, which cost the fetch loop most of its time. A job goes to
    an idle runner when there is one, else to a new thread; a runner idle for `idle_s` ends. A handler
    stuck past its time limit keeps its runner (Python cannot stop it) but not its slot, so the next
    job simply gets another thread. Runners are daemon threads: a stuck handler cannot keep the
    process alive after the drain has handed its job back.
    """

    def __init__(self, run, idle_s: float = 30.0):
        self._run = run
        self.idle_s = idle_s
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self.started = 0

    def submit(self, job):
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
            self.started += 1
            number = self.started
        threading.Thread(target=self._loop, args=(job,), name=f"jobbie-runner-{number}", daemon=True).start()

    def _loop(self, job):
        while True:
            self._run(job)
            with self._lock:
                self._idle += 1
            while True:
                try:
                    job = self._jobs.get(timeout=self.idle_s)
                    break
                except queue.Empty:
                    with self._lock:
                        # A job put for this runner while the wait ran out is taken, not left behind.
                        if self._jobs.empty():
                            self._idle -= 1
                            return


class Worker:
    """Runs handlers for the given queues until stopped."""

    def __init__(self, handlers: dict, server: str | None = None, client: Client | None = None,
                 concurrency: int = 4, lease_ms: int = 30_000, heartbeat_ms: int | None = None,
                 wait_ms: int = 2000, drain_timeout: float = 30.0, worker_id: str | None = None,
                 leases: dict | None = None, timeouts: dict | None = None,
                 curve_server_key: str | bytes | None = None, curve_client_keys=None):
        if not handlers:
            raise ValueError("a worker needs at least one handler: {queue: function}")
        self.handlers = dict(handlers)
        #: Queues whose jobs are fetched with a lease of their own ({queue: lease_ms}); the rest use lease_ms.
        self.leases = {q: ms for q, ms in (leases or {}).items() if q in self.handlers and ms}
        #: Seconds a handler of a queue may run ({queue: seconds}); a job's own timeout_ms wins.
        self.timeouts = {q: t for q, t in (timeouts or {}).items() if q in self.handlers and t}
        # CURVE (a node started with --curve): as for Client, from JOBBIE_CURVE_SERVER_KEY and
        # JOBBIE_CURVE_CLIENT_KEY unless given.
        self.client = client or Client(server, curve_server_key=curve_server_key, curve_client_keys=curve_client_keys)
        self._own_client = client is None
        self.concurrency = concurrency
        self.lease_ms = lease_ms
        # At most 2 s by default: cancellation and budget news reach handlers within about that long.
        self.heartbeat_s = (heartbeat_ms or default_heartbeat_ms(lease_ms)) / 1000.0
        self.wait_ms = wait_ms
        self.drain_timeout = drain_timeout
        self.hostname = socket.gethostname()
        self.worker_id = worker_id or f"{self.hostname}-{os.getpid()}-{os.urandom(3).hex()}"
        self.in_flight: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(concurrency)
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self.completed = 0
        self.failed = 0
        self._outcomes: Outcomes | None = None
        self._runners = Runners(self._run_job)

    # ---------------------------------------------------------------- control
    def stop(self, *_):
        """Begin a graceful drain (safe from a signal handler)."""
        self._stopping.set()

    def _on_signal(self, signum, frame):
        if self._stopping.is_set():
            # A second Ctrl-C: stop at once. Leases of running jobs end and they run again elsewhere.
            log.warning("worker %s: second %s, stopping now (%d running jobs come back when their leases end)",
                        self.worker_id, signal.Signals(signum).name, len(self.in_flight))
            os._exit(130)
        log.info("worker %s: %s, finishing %d running jobs (up to %g s; again to stop at once)",
                 self.worker_id, signal.Signals(signum).name, len(self.in_flight), self.drain_timeout)
        self.stop()

    def run(self):
        """Fetch and run jobs until `stop()` or SIGTERM/SIGINT, then drain."""
        _log_to_stderr_unless_configured()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info("worker %s: queues %s, concurrency %d, heartbeat %g s, server %s", self.worker_id,
                 ", ".join(self.handlers), self.concurrency, self.heartbeat_s, self.client.endpoint)
        self._outcomes = Outcomes(self.client)
        beat = threading.Thread(target=self._heartbeat_loop, name="jobbie-heartbeat", daemon=True)
        beat.start()
        try:
            self._fetch_loop()
        finally:
            self._drain()
            self._outcomes.close()
            if self._own_client:
                self.client.close()

    # ---------------------------------------------------------------- fetching
    def _fetch_groups(self) -> list[tuple[int, list[str]]]:
        """(lease_ms, queues) per fetch request: one fetch carries one lease length."""
        groups: dict[int, list[str]] = {}
        for queue in self.handlers:
            groups.setdefault(self.leases.get(queue, self.lease_ms), []).append(queue)
        return list(groups.items())

    def _fetch_loop(self):
        groups = self._fetch_groups()
        turn = 0
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            free = 1
            while free < self.concurrency and self._slots.acquire(blocking=False):
                free += 1
            jobs = []
            # Several lease lengths: every group is asked without waiting, and one of them (in turn)
            # long-polls when the others had nothing.
            turn = (turn + 1) % len(groups)
            order = groups[turn:] + groups[:turn]
            for i, (lease_ms, queues) in enumerate(order):
                if len(jobs) >= free:
                    break
                wait_ms = self.wait_ms if i == len(order) - 1 and not jobs else 0
                try:
                    jobs += self.client.fetch(queues, self.worker_id, count=free - len(jobs), wait_ms=wait_ms,
                                              lease_ms=lease_ms, hostname=self.hostname)
                except JobbieError as exc:
                    log.warning("fetch failed: %s", exc)
                    self._stopping.wait(0.5)
                    break
            for _ in range(free - len(jobs)):
                self._slots.release()
            for data in jobs:
                job = Job(data)
                with self._lock:
                    self.in_flight[job.id] = job
                self._runners.submit(job)

    def time_limit(self, job: Job) -> float | None:
        """Seconds the handler may run on this attempt: the job's timeout_ms, else its task's timeout."""
        if job.timeout_ms:
            return job.timeout_ms / 1000.0
        return self.timeouts.get(job.queue)

    def _run_job(self, job: Job):
        started = time.monotonic()
        limit = self.time_limit(job)
        timer = None
        if limit:
            timer = threading.Timer(limit, self._time_out, (job, limit, started))
            timer.daemon = True
            timer.start()
        outcome = error = result = None
        try:
            result = self.handlers[job.queue](job)
        except Hold as held:
            result = held
        except Exception as exc:
            error = exc
        finally:
            if timer is not None:
                timer.cancel()
        if not job._settle():
            # The time limit won: the attempt was failed and its slot freed; this outcome is too late.
            log.debug("%s %s attempt %d: the handler returned %.0f ms after its time limit; outcome ignored",
                      job.queue, job.id, job.attempt, (time.monotonic() - started - limit) * 1000)
            return
        try:
            # The handler is done: its slot takes the next job while this outcome is reported (the job
            # stays in flight, and heartbeated, until the server has answered for it).
            self._free_slot(job)
            took = (time.monotonic() - started) * 1000
            if isinstance(error, BudgetExceeded):
                outcome = self._finish(job, error=BudgetExceeded("budget exceeded"), paused=True)
                log.info("%s %s attempt %d: %s after %.0f ms", job.queue, job.id, job.attempt, outcome, took)
            elif error is not None:
                outcome = self._finish(job, error=error)
                log.warning("%s %s attempt %d: %s after %.0f ms: %s: %s", job.queue, job.id, job.attempt, outcome,
                            took, type(error).__name__, error, exc_info=(type(error), error, error.__traceback__)
                            if not isinstance(error, Cancelled) else None)
            else:
                outcome = self._finish(job, result=result)
                log.info("%s %s %s: %s in %.0f ms", job.queue, job.id,
                         f"iteration {job.iteration}" if job.iteration else f"attempt {job.attempt}", outcome, took)
        finally:
            self._release(job)

    def _release(self, job: Job):
        with self._lock:
            self.in_flight.pop(job.id, None)
        self._free_slot(job)

    def _free_slot(self, job: Job):
        with self._lock:
            if job._slot_freed:
                return
            job._slot_freed = True
        self._slots.release()

    def _time_out(self, job: Job, limit: float, started: float):
        """The handler ran past its time limit: fail the attempt now and free its slot."""
        if not job._settle():
            return  # it finished just in time
        job.timed_out = True  # job.check() raises TimedOut from now on; heartbeats stop with the release
        try:
            outcome = self._finish(job, error=TimedOut(f"timeout after {limit:g} s"))
            log.warning("%s %s attempt %d: %s: timeout after %g s (the handler is still running; what it "
                        "returns is ignored)", job.queue, job.id, job.attempt, outcome, limit)
        finally:
            self._release(job)

    def _finish(self, job: Job, result=None, error: Exception | None = None, paused: bool = False) -> str:
        """Report the outcome; returns what became of the job, for the log line."""
        outcomes = self._outcomes or self.client
        if job.lost:
            return "lease lost, outcome discarded"  # someone else holds the job now
        extra = self._final_report(job)
        if getattr(job, "_usage", None):
            extra["usage"] = job._usage  # the attempt's final figures go with its outcome
        if paused and job.checkpoint is not None:
            extra["checkpoint"] = job.checkpoint  # the held job resumes from here
        if error is None and job._hold is not None and not isinstance(result, (Hold, Continue, Done)):
            result = job._hold
        try:
            if error is None:
                if isinstance(result, Hold):
                    if result.checkpoint is not None:
                        extra["checkpoint"] = result.checkpoint
                    outcomes.ack(job.id, agent_status="hold", hold_reason=result.reason,
                                    hold_payload=result.payload, **extra)
                    return f"held ({result.reason})"
                if isinstance(result, Continue):
                    if result.checkpoint is not None:
                        extra["checkpoint"] = result.checkpoint
                    answer = outcomes.ack(job.id, agent_status="continue", result=result.result, **extra)
                    state = answer.get("state")
                    return "continues" if state == "pending" else f"iteration recorded, job {state}"
                if isinstance(result, Done):
                    result = result.result
                outcomes.ack(job.id, result=result, **extra)
                self.completed += 1
                return "completed"
            if paused:
                answer = outcomes.fail(job.id, "budget exceeded", **extra)
                return f"paused: budget exceeded (job {answer.get('state')})"
            if isinstance(error, TimedOut):
                answer = outcomes.fail(job.id, str(error), **extra)
            else:
                answer = outcomes.fail(job.id, f"{type(error).__name__}: {error}",
                                          backtrace="".join(traceback.format_exception(error)), **extra)
            self.failed += 1
            state = answer.get("state") if isinstance(answer, dict) else None
            return f"failed ({state})" if state else "failed"
        except JobbieError as exc:
            if exc.reason == "lease_lost":
                return "lease lost before it finished, outcome discarded"
            log.error("job %s: could not report its outcome: %s", job.id, exc)
            return "outcome not reported"
        finally:
            job.lost = True  # reported (or abandoned): nothing more goes out for it

    def _final_report(self, job: Job) -> dict:
        """What the ack or fail carries that was not sent yet (checkpoint, usage, attempt). Neither op
        takes `progress`: progress set since the last heartbeat goes out in one heartbeat first."""
        extra = job.take_heartbeat()
        if "progress" in extra:
            try:
                self.client.heartbeat(self.worker_id, {job.id: {"progress": extra.pop("progress"),
                                                                "attempt": job.attempt}})
            except JobbieError as exc:
                log.warning("job %s: could not send its last progress: %s", job.id, exc)
        return extra

    # -------------------------------------------------------------- heartbeats
    def _heartbeat_loop(self):
        # Keeps beating through a drain (leases must not expire while jobs finish),
        # once per interval, until the drain is over.
        while not self._finished.wait(self.heartbeat_s):
            self._heartbeat_once()

    def _heartbeat_once(self):
        with self._lock:
            jobs = {job_id: job for job_id, job in self.in_flight.items() if not job.lost}
        if not jobs:
            return
        answers = {}
        for part in heartbeat_parts({j: job.take_heartbeat() for j, job in jobs.items()}):
            try:
                answers.update(self.client.heartbeat(self.worker_id, part))
            except JobbieError as exc:
                log.warning("heartbeat failed: %s", exc)
        for job_id, answer in answers.items():
            job = jobs.get(job_id)
            if job is None:
                continue
            if answer["status"] == "cancel":
                job.cancelled = True
            elif answer["status"] == "lost":
                job.lost = True
            if answer.get("budget_exceeded"):
                job.budget_exceeded = True

    # ------------------------------------------------------------------ drain
    def _drain(self):
        deadline = time.monotonic() + self.drain_timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self.in_flight.values())
        for job in left:
            job.cancelled = True  # cooperative handlers stop at their next check()
            if not job.lost:
                extra = self._final_report(job)
                try:
                    self.client.fail(job.id, "worker shut down before the job finished", **extra)
                except JobbieError as exc:
                    log.warning("job %s: could not hand it back: %s", job.id, exc)
                job.lost = True
        self._finished.set()
