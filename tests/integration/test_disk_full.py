"""A filling disk: writes are refused with RESOURCE_EXHAUSTED / disk_full before LMDB or the journal
fail, reads and deletes go on, cluster_status warns, no actor crash-loops, and writes resume once
space is freed. The data dir lives on a small tmpfs (mounting one needs root)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from jobbie.transport.client import Client
from jobbie.transport.errors import ResourceExhausted

from .conftest import Node, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        if os.environ.get("JOBBIE_REQUIRE_TMPFS") == "1":
            pytest.fail(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path: str, leave_bytes: int):
    """Write a file that leaves about `leave_bytes` free on path's filesystem."""
    st = os.statvfs(os.path.dirname(path))
    size = max(0, st.f_bavail * st.f_frsize - leave_bytes)
    with open(path, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            f.write(chunk[:min(size, len(chunk))])
            size -= len(chunk)


def test_a_full_disk_refuses_writes_and_resumes_when_space_frees(small_disk):
    node = Node(str(small_disk / "node"), ["--disk-free-min-mb", "48"])
    try:
        node.start()
        client = Client(node.endpoint, timeout=2, retry_for=0)
        kept = client.enqueue("disk", {"n": 0})
        raft_pid = node.actor_pid("raft")
        # When the disk fills up to under the reserve
        filler = str(small_disk / "filler")
        fill(filler, leave_bytes=20 * 1024 * 1024)

        def refused():
            try:
                client.enqueue("disk", {"n": 1})
                return False
            except ResourceExhausted as exc:
                return exc.reason == "disk_full" and exc
        exc = wait_for(refused, 5, message="the disk_full refusal")
        assert exc.retry_after_ms and "MiB free" in exc.message
        # Then reads go on, cluster_status says why, and nothing crashed
        assert client.get_job(kept)["state"] == "pending"
        status = client.call("cluster_status")
        assert status["disk"]["low"] is True and "disk is low" in status.get("warning", "")
        assert client.call("delete_job", job_id=kept) == {}
        # And when space is freed, writes resume by themselves
        os.unlink(filler)
        wait_for(lambda: not refused(), 5, message="writes to resume")
        assert node.actor_pid("raft") == raft_pid
        assert all(a["restarts"] == 0 for a in client.call("cluster_status")["actors"])
        client.close()
    finally:
        node.stop(timeout=15)
        node.kill_everything()
