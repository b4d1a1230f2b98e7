"""`jobbie chaos`: a local cluster under load and seeded faults, then the invariants (mixed into cli.main.Cli)."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile

from .common import _fail, _flag

NODES_MAX = 7
LOAD_MAX = 16
SECONDS_MAX = 7 * 86_400


class ChaosCommands:
    def chaos(self, seconds: float = 120, seed: int = None, nodes: int = 3, producers: int = 2, workers: int = 2,
              data_dir: str = None, keep: bool = False, output: str = "text"):
        """Start a local cluster, load it, inject seeded faults, and check that nothing acknowledged was lost.

        Starts NODES real `jobbie server` processes on free 127.0.0.1 ports, producers that enqueue with
        request ids and library workers, all reaching the nodes through TCP proxies. For --seconds, one
        fault every 1-4 s, drawn from --seed: kill -9 of an actor, kill -9 of a node (restarted), SIGSTOP
        of the leader's raft process, or every client connection dropped. Then the workers drain the
        queue and the run checks: no acknowledged enqueue lost or left incomplete, every acknowledged ack
        completed, no job active past its lease, identical replica digests, and a probe write acknowledged
        after every fault. Exit 0 when every invariant holds, 1 when one breaks (named in one line),
        2 on a bad flag, 130 on Ctrl-C. Every process it starts is stopped at the end.

        Args:
          seconds: How long faults are injected (default 120); start, drain and checks take about 20 s more.
          seed: The seed of the fault plan (default: a random one, printed first); the same seed replays
            the same plan (a machine's timing still varies from run to run).
          nodes: Voters in the cluster, 3 to 7 (default 3); one node at most is down at a time.
          producers: Producer threads, each enqueuing one job at a time (default 2).
          workers: Library workers (concurrency 4 each) running the jobs (default 2).
          data_dir: Where the nodes keep their data and logs: an empty or new directory (default: a new
            temporary one). Removed at the end unless --keep or an invariant broke.
          keep: Keep the data dir (the nodes' stores and logs) after the run.
          output: text (default: a progress line every 5 s, then the figures) or json (one JSON object on
            stdout; progress on stderr).
        """
        settings = _settings(seconds, seed, nodes, producers, workers, data_dir, keep, output)
        sys.exit(_chaos(**settings))


def _whole(value, name: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        _fail(f"--{name} must be a whole number from {low} to {high}; got {value!r}", 2)
    return value


def _settings(seconds, seed, nodes, producers, workers, data_dir, keep, output) -> dict:
    """The checked flags (one line and exit 2 for a bad one)."""
    if type(seconds) not in (int, float) or not 1 <= seconds <= SECONDS_MAX:
        _fail(f"--seconds must be a number of seconds from 1 to {SECONDS_MAX}; got {seconds!r}", 2)
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    seed = _whole(seed, "seed", 0, (1 << 63) - 1)
    if output not in ("text", "json"):
        _fail(f"--output must be text or json, not {output!r}", 2)
    if data_dir is not None:
        data_dir = os.path.abspath(str(data_dir))
        if os.path.exists(data_dir) and (not os.path.isdir(data_dir) or os.listdir(data_dir)):
            _fail(f"--data-dir {data_dir} is not an empty directory (a chaos run starts new nodes)", 2)
    return {"seconds": seconds, "seed": seed, "nodes": _whole(nodes, "nodes", 3, NODES_MAX),
            "producers": _whole(producers, "producers", 1, LOAD_MAX),
            "workers": _whole(workers, "workers", 1, LOAD_MAX), "data_dir": data_dir, "keep": _flag(keep),
            "output": output}


def _interrupt(signum, frame):
    """Ctrl-C or SIGTERM: stop the run; a second one is ignored, so that the stop itself is not cut short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _chaos(seconds, seed, nodes, producers, workers, data_dir, keep, output) -> int:
    from jobbie.cli.chaos_harness import ChaosRun, Cluster, HarnessError, pids_writing_under
    from jobbie.cli.chaos_harness.nodes import kill_pid

    # The worker library logs a line per lost lease, which faults make common: not news here.
    worker_log = logging.getLogger("jobbie.worker")
    worker_log.addHandler(logging.NullHandler())
    worker_log.propagate = False
    talk = sys.stderr if output == "json" else sys.stdout

    def say(line: str):
        print(line, file=talk, flush=True)

    say(f"jobbie chaos: seed {seed} (replay: jobbie chaos --seed {seed} --seconds {seconds:g} --nodes {nodes} "
        f"--producers {producers} --workers {workers})")
    made_dir = data_dir is None or not os.path.exists(data_dir)
    base = data_dir or tempfile.mkdtemp(prefix="jobbie-chaos-")
    os.makedirs(base, exist_ok=True)
    cluster = Cluster(base, size=nodes)
    run = ChaosRun(cluster, seed, seconds, producers=producers, workers=workers,
                   on_progress=lambda p: say(_progress_line(p)))
    figures, failure, code = None, None, 0
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        figures = run.run()
    except KeyboardInterrupt:
        say(f"jobbie chaos: interrupted after {run.progress()['elapsed_s']} s; stopping every process it started")
        code = 130
    except HarnessError as exc:
        failure = f"the cluster did not get through the run: {str(exc).splitlines()[0]}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            cluster.stop()
            for pid in pids_writing_under(base):  # a node process the stop did not know of
                kill_pid(pid)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if figures is not None and figures["broken"]:
        failure = "; ".join(figures["broken"])
    kept = keep or failure is not None
    if kept:
        if figures is not None:
            figures["data_dir"] = base
    elif made_dir:
        shutil.rmtree(base, ignore_errors=True)
    else:
        _empty(base)
    if figures is not None:
        if output == "json":
            print(json.dumps(figures, sort_keys=True))
        else:
            print(render_figures(figures))
    if code:
        return code
    if failure is not None:
        where = f"; data and logs kept in {base}" if kept else ""
        print(f"jobbie: chaos seed {seed}: {failure}{where}", file=sys.stderr)
        return 1
    return 0


def _empty(directory: str):
    """Remove what a run put in `directory`, which was empty before it (the directory stays)."""
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def _progress_line(p: dict) -> str:
    return (f"{p['elapsed_s']:7.1f}s  {p['phase']:<24} faults {p['faults']:>3}  enqueues acked "
            f"{p['enqueues_acknowledged']:>7}  acks {p['acks_acknowledged']:>7}")


def render_figures(f: dict) -> str:
    """The figures of a run for people: one line per figure, then the fault schedule."""
    faults = ", ".join(f"{k} {v}" for k, v in f["faults"].items())
    skipped = f" ({f['skipped_steps']} drawn steps skipped: nothing to hit)" if f["skipped_steps"] else ""
    recover = f["time_to_recover"]
    if recover["measured"]:
        recovered = (f"median {recover['median_s']:.2f} s, max {recover['max_s']:.2f} s "
                     f"over {recover['measured']} faults")
    else:
        recovered = "no fault measured"
    if recover["unrecovered"]:
        recovered += f", {recover['unrecovered']} not recovered"
    if f["replicas"]:
        digests = f"DIFFER: {f['replicas']}"
    elif len(f["digests"]) == 1:
        digests = f"identical: {f['nodes']} nodes at applied index {f['applied_index']}"
    else:
        digests = f"DIFFER: {len(f['digests'])} digests"
    rows = [
        ("seed", f["seed"]),
        ("faults", f"{f['faults_total']}: {faults}{skipped}"),
        ("ops acknowledged", f"enqueues {f['enqueues_acknowledged']}, acks {f['acks_acknowledged']}"),
        ("lost acked enqueues", f["lost"]),
        ("enqueued, not completed", f["not_completed"]),
        ("acked, not completed", len(f["acked_not_completed"])),
        ("duplicate executions", f"{f['duplicate_executions']} (and {f['retried_on_purpose']} planned retries)"),
        ("active past lease", len(f["active_past_lease"])),
        ("replica digests", digests),
        ("time to recover", recovered),
        ("longest enqueue", f"{f['longest_enqueue_s']} s"),
    ]
    out = [f"{name:<24} {value}" for name, value in rows]
    out.append("schedule")
    for e in f["schedule"]:
        if "recover_s" not in e:
            after = ""
        elif e["recover_s"] is None:
            after = "  NOT RECOVERED"
        else:
            after = f"  recovered in {e['recover_s']:.2f} s"
        out.append(f"  {e['at_s']:7.1f}s  {e['kind']:<17} {e['detail']}{after}")
    verdict = "every invariant holds" if f["ok"] else "BROKEN: " + "; ".join(f["broken"])
    out.append(f"{verdict} ({f['seconds']} s of faults, {f['run_seconds']} s in all)")
    return "\n".join(out)
