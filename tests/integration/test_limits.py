"""Resource limits at start: the open-file limit is raised where allowed (or a warning names it), and an
address-space limit too small for LMDB's map is one line at start, not a raft crash loop."""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from .conftest import Node, free_port

pytestmark = pytest.mark.timeout(60)


def _nofile_soft(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


class LimitedNode(Node):
    """A node started under a lower soft open-file limit (the hard limit stays)."""

    def __init__(self, data_dir, soft: int):
        super().__init__(data_dir)
        self.soft = soft

    def start(self, wait: bool = True):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        soft = self.soft

        def lower():
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.makedirs(os.path.dirname(self.data_dir) or ".", exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobbie.cli.main", "server", "--data-dir", self.data_dir, "--bind", self.endpoint,
             *self.extra_args], stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lower)
        if wait:
            self.wait_ready()
        return self


def test_the_open_file_limit_is_raised_for_every_actor(tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise")
    node = LimitedNode(tmp_path / "node", soft=1024)
    try:
        node.start()
        status = node.status()
        # the admission process holds the client socket: one file per client connection
        admission = next(a["pid"] for a in status["actors"] if a["name"] == "admission")
        assert _nofile_soft(admission) > 1024
        assert _nofile_soft(node.proc.pid) > 1024
    finally:
        node.stop(timeout=15)
        node.kill_everything()


def test_a_low_open_file_limit_that_cannot_be_raised_is_a_warning(tmp_path):
    # Given a hard limit of 256 (the soft one cannot go past it)
    def lower():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "jobbie.cli.main", "server", "--data-dir", tmp_path / "d",
                             "--bind", f"tcp://127.0.0.1:{port}", "--http=false"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=lower)
    try:
        line = ""
        for _ in range(10):
            line = proc.stderr.readline()
            if "open files" in line or "serving" in line:
                break
        assert "WARNING" in line and "open files" in line and "256" in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_an_address_space_limit_too_small_for_the_store_is_one_line(tmp_path):
    def lower():
        resource.setrlimit(resource.RLIMIT_AS, (8 * 1024**3, resource.RLIM_INFINITY))
    proc = subprocess.run([sys.executable, "-m", "jobbie.cli.main", "server", "--data-dir", tmp_path / "d",
                           "--bind", f"tcp://127.0.0.1:{free_port()}", "--http=false"], capture_output=True, text=True,
                          timeout=30, preexec_fn=lower)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "address space" in lines[0] and "ulimit -v" in lines[0], proc.stderr
