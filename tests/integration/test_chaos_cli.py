"""The real `jobbie chaos` command, run as a subprocess: a short run's JSON, Ctrl-C, and bad flags.

The node processes a run starts write their stdout under its --data-dir, which is how the test
finds them (by pid, through /proc) while the run goes on, and checks that none is left after it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from jobbie.cli.chaos_harness import pids_writing_under, running, wait_for
from jobbie.cli.chaos_harness.faults import KINDS
from jobbie.cli.chaos_harness.nodes import kill_pid

CLI = [sys.executable, "-m", "jobbie.cli.main"]
PROGRESS = re.compile(r"^\s*[\d.]+s  (?P<phase>.+?)\s+faults\s+\d+\s+enqueues acked\s+(?P<enqueues>\d+)")


class ChaosProcess:
    """`jobbie chaos ARGS` in a session of its own; its stderr lines are collected as they come."""

    def __init__(self, data_dir: str, *args):
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if k != "JOBBIE_SERVER"}
        self.proc = subprocess.Popen([*CLI, "chaos", "--data-dir", data_dir, *map(str, args)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.err_lines: list[str] = []
        self.out_lines: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stderr, self.err_lines), (self.proc.stdout, self.out_lines))]
        for reader in self.readers:
            reader.start()
        #: Node pids seen while the run went on.
        self.seen: set[int] = set()

    @staticmethod
    def _read(stream, lines: list[str]):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def phase(self) -> str | None:
        """The phase of the last progress line so far."""
        for line in reversed(self.err_lines):
            match = PROGRESS.match(line)
            if match:
                return match["phase"]
        return None

    def wait_for_faults(self, timeout: float = 60.0):
        """Wait until a progress line says faults are being injected; note the node pids then."""
        def injecting():
            if self.proc.poll() is not None:
                raise AssertionError(f"jobbie chaos ended early ({self.proc.returncode}): {self.err_lines}")
            return self.phase() == "faults"

        wait_for(injecting, timeout, interval=0.1, message="a progress line in the faults phase")
        self.seen |= set(pids_writing_under(self.data_dir))

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=5)
        return code

    @property
    def out(self) -> str:
        return "".join(line + "\n" for line in self.out_lines)

    def kill_everything(self):
        """Teardown: the command and any node process under its data dir, by pid."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in pids_writing_under(self.data_dir) + sorted(self.seen):
            if running(pid):
                kill_pid(pid)

    def left_behind(self) -> list[int]:
        return sorted({p for p in self.seen if running(p)} | set(pids_writing_under(self.data_dir)))


@pytest.fixture
def chaos_process(tmp_path):
    runs: list[ChaosProcess] = []

    def start(*args) -> ChaosProcess:
        run = ChaosProcess(str(tmp_path / f"run{len(runs)}"), *args)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_everything()


@pytest.mark.timeout(240)
def test_a_short_run_prints_its_figures_as_json_and_leaves_no_process(chaos_process):
    # Given an 8 s run with a fixed seed and JSON output
    run = chaos_process("--seconds", 8, "--seed", 12, "--output", "json")
    # While it runs, its node processes exist (so the check below can fail)
    run.wait_for_faults()
    assert len(run.seen) >= 12, f"expected 3 supervisors and their actors, saw {sorted(run.seen)}"
    # Then it exits 0 and prints one JSON object on stdout
    code = run.finish(timeout=200)
    assert code == 0, f"exit {code}\nstdout: {run.out}\nstderr: {run.err_lines}"
    assert len(run.out.splitlines()) == 1, run.out
    figures = json.loads(run.out)
    # And the seed is printed first, with the line that replays it
    assert run.err_lines[0].startswith("jobbie chaos: seed 12 (replay: jobbie chaos --seed 12 --seconds 8")
    assert figures["seed"] == 12 and figures["ok"] is True and figures["broken"] == []
    assert set(figures["faults"]) == set(KINDS) and figures["faults_total"] == sum(figures["faults"].values()) >= 1
    assert figures["enqueues_acknowledged"] > 50 and figures["acks_acknowledged"] > 0
    assert figures["lost"] == 0 and figures["not_completed"] == 0
    assert figures["acked_not_completed"] == [] and figures["active_past_lease"] == []
    assert len(figures["digests"]) == 1 and figures["replicas"] is None
    recover = figures["time_to_recover"]
    assert recover["measured"] == figures["faults_total"] and recover["unrecovered"] == 0
    assert 0 <= recover["median_s"] <= recover["max_s"] < 60
    faults = [e for e in figures["schedule"] if e["kind"] in KINDS]
    assert len(faults) == figures["faults_total"] and all(e["recover_s"] is not None for e in faults)
    # And no node process is left, and the data dir (not kept) is gone
    assert run.left_behind() == []
    assert not os.path.exists(run.data_dir)


@pytest.mark.timeout(180)
def test_ctrl_c_stops_every_process_it_started(chaos_process):
    # Given a long run that is injecting faults
    run = chaos_process("--seconds", 600, "--seed", 4, "--output", "json")
    run.wait_for_faults()
    assert run.seen, "no node process found under the run's data dir"
    # When it gets SIGINT (what Ctrl-C sends)
    started = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(timeout=90)
    # Then it stops soon, exits 130, prints no figures, and leaves no node process behind
    assert code == 130, f"exit {code}\nstderr: {run.err_lines}"
    assert time.monotonic() - started < 60
    assert run.out == ""
    assert any("interrupted" in line for line in run.err_lines), run.err_lines
    assert "Traceback" not in "\n".join(run.err_lines)
    assert run.left_behind() == []
    assert not os.path.exists(run.data_dir)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, start", [
    (["--secnds", "5"], "jobbie chaos: no such flag --secnds; did you mean --seconds?"),
    (["--nodes", "2"], "jobbie: --nodes must be a whole number from 3 to 7; got 2"),
    (["--seconds", "soon"], "jobbie: --seconds must be a number of seconds"),
    (["--output", "yaml"], "jobbie: --output must be text or json"),
])
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path, args, start):
    proc = subprocess.run([*CLI, "chaos", "--data-dir", str(tmp_path / "d"), *args], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc
    assert proc.stderr.startswith(start), proc.stderr
    assert not os.path.exists(tmp_path / "d"), "nothing should have started"


@pytest.mark.timeout(60)
def test_a_data_dir_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "file").write_text("kept")
    proc = subprocess.run([*CLI, "chaos", "--data-dir", str(tmp_path / "old")], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc
    assert "is not an empty directory" in proc.stderr
    assert (tmp_path / "old" / "file").read_text() == "kept"
