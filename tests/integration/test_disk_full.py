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


def test_a_follower_under_its_disk_reserve_falls_behind_without_crashing_and_catches_up(tmp_path):
    """A follower whose disk fills takes nothing from the leader (its journal would fill the disk:
    a memory map answers that with SIGBUS, and a restart meets the same entries again), while the
    two others go on; once space is freed it catches up to the same digest."""
    from .cluster import Cluster

    base = tmp_path / "c"
    disk = base / "n3"
    disk.mkdir(parents=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0700", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("JOBBIE_REQUIRE_TMPFS") == "1":
            pytest.fail(f"cannot mount a tmpfs: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    cluster = Cluster(base, node_args={"n3": ["--disk-free-min-mb", "48"]})
    filler = str(base / "n3-filler")  # beside the data dir, on the same tmpfs below
    try:
        cluster.start()
        n3 = cluster["n3"]
        if cluster.wait_leader() is n3:
            n3.stop()  # the test is about a follower: let another node lead
            cluster.restart(n3)
            wait_for(lambda: cluster.leader_view() not in (None, n3), 30, message="a leader other than n3")
        others = [n for n in cluster.nodes if n is not n3]
        writer = Client(",".join(n.endpoint for n in others), timeout=5, retry_for=30)
        for i in range(20):
            writer.enqueue("disk", {"n": i})
        cluster.wait_converged(timeout=30)
        raft_pid = n3.actor_pid("raft")
        # When n3's disk fills to under its reserve
        filler = str(disk / "filler")
        fill(filler, leave_bytes=20 * 1024 * 1024)
        # (try_status would say None: a node that warns is not up to its harness)
        wait_for(lambda: (n3.status().get("disk") or {}).get("low"), 10, message="n3 to see its disk low")
        free_before = os.statvfs(str(disk)).f_bavail
        # Then the others keep writing (with a majority of two), n3 refuses its own clients ...
        for i in range(300):
            writer.enqueue("disk", {"n": i, "pad": "x" * 8000})
        with Client(n3.endpoint, timeout=5, retry_for=0) as direct:
            with pytest.raises(ResourceExhausted) as refused:
                direct.enqueue("disk", {"n": -1})
        assert refused.value.reason == "disk_full"
        # ... takes nothing from the leader (its disk does not fill), and nothing crashed
        time.sleep(1.0)
        behind = n3.status()
        assert behind["applied_index"] < others[0].status()["applied_index"]
        assert "disk is low" in behind["warning"]
        assert (free_before - os.statvfs(str(disk)).f_bavail) * os.statvfs(str(disk)).f_frsize < 4 * 1024 * 1024
        assert n3.actor_pid("raft") == raft_pid
        # And once space is freed it catches up, to the same state as the others
        os.unlink(filler)
        digests = cluster.wait_converged(timeout=60)
        assert len({d for _, d in digests.values()}) == 1
        assert n3.actor_pid("raft") == raft_pid
        assert all(a["restarts"] == 0 for a in n3.status()["actors"])
        writer.close()
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
        cluster.stop()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
