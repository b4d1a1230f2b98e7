"""Fault tests on a real three-node cluster: kill -9, restarts, stale and future LMDBs, snapshots, power loss.

Every test starts its own cluster (cluster.py) in tmp dirs and ends it by pid
at teardown, then checks that no process of it is left. After each fault the
replicas must be byte-identical (digest of every LMDB db at the same applied
index) and no job may stay `active` past its lease. Figures (failover and
catch-up times) are printed; run with `-s` to see them.
"""
from __future__ import annotations

import os
import random
import shutil
import time
import uuid

import pytest

from jobbie.actors.raft import recovery
from jobbie.transport.client import Client

from .cluster import (Cluster, copy_lmdb, digest, journal_end, journal_job_ids, journal_records,
                      make_cluster, replay_digest, set_journal_end)  # noqa: F401 (make_cluster is a fixture)
from .helpers import Enqueuer, get_jobs, queue_row, total_jobs, wait_for

LEASE_MS = 1000
#: How far past its lease an active job may be seen before that counts as a leak.
LEASE_GRACE_S = 2.0
FAILOVER_LIMIT_S = 5.0


# ------------------------------------------------------------------- helpers
class Load:
    """Several enqueuer threads, each with its own client spread over `endpoints`."""

    def __init__(self, endpoints: str, queue: str, threads: int, retry_for: float = 30.0, pause: float = 0.005):
        self.queue = queue
        self.enqueuers = [Enqueuer(endpoints, queue, timeout=1.0, retry_for=retry_for, pause=pause)
                          for _ in range(threads)]

    def start(self):
        for e in self.enqueuers:
            e.start()
        return self

    @property
    def count(self) -> int:
        return sum(len(e.acked) for e in self.enqueuers)

    def wait(self, count: int, timeout: float, what: str = ""):
        wait_for(lambda: self.count >= count, timeout, interval=0.02,
                 message=f"{count} acknowledged enqueues{what} (have {self.count}, errors {self.errors[:3]})")

    def stop(self):
        for e in self.enqueuers:
            e._halt.set()
        for e in self.enqueuers:
            e.stop()

    @property
    def errors(self) -> list:
        return [err for e in self.enqueuers for err in e.errors]

    @property
    def acked(self) -> list:
        return [j for e in self.enqueuers for j in e.acked]

    @property
    def payloads(self) -> dict:
        out = {}
        for e in self.enqueuers:
            out.update(e.payloads)
        return out


class Leases:
    """Jobs fetched with a short lease and never acknowledged: their leases must be reclaimed on time."""

    def __init__(self, queue: str = "leased"):
        self.queue = queue
        self.ids: list[str] = []
        self.expires_by = 0.0  # wall-clock seconds, at or after every lease's end

    def take(self, client: Client, n: int = 3):
        for i in range(n):
            client.enqueue(self.queue, {"lease": i, "nonce": uuid.uuid4().hex})
        jobs = client.fetch(self.queue, worker_id=f"w-{uuid.uuid4().hex[:8]}", count=n, lease_ms=LEASE_MS)
        assert jobs, "nothing to fetch right after enqueuing"
        self.ids += [j["job_id"] for j in jobs]
        self.expires_by = time.time() + LEASE_MS / 1000.0
        return jobs

    def check(self, nodes) -> float:
        """Past the lease time: on every node no job is active (nothing fetched here is renewed).

        Returns how long after the last lease ended every node showed no active job.
        """
        wait_for(lambda: time.time() >= self.expires_by, LEASE_MS / 1000.0 + 1.0, interval=0.05,
                 message="the leases to run out")
        clients = {n.node_id: n.client(timeout=2.0, retry_for=5.0) for n in nodes}
        seen = {}

        def clear():
            now_ms = time.time() * 1000
            for node_id, c in clients.items():
                active = sum(q["active"] for q in c.queues())
                tracked = get_jobs(c, self.ids)
                stale = {j: r["ok"]["lease_expires_at"] for j, r in tracked.items()
                         if "ok" in r and r["ok"]["state"] == "active"}
                seen[node_id] = (active, {j: int(now_ms - at) for j, at in stale.items()})
                if active or stale:
                    return None
            return time.time() - self.expires_by

        try:
            took = wait_for(clear, LEASE_GRACE_S + 1.0, interval=0.1,
                            message="no active job past its lease on any node")
        except AssertionError:
            raise AssertionError(f"jobs still active more than {LEASE_GRACE_S}s after their lease ended "
                                 f"(node: (active count, {{job: ms past lease}})): {seen}") from None
        print(f"leases reclaimed on every node within {max(took, 0):.2f}s of their end")
        return took


def assert_acked_on(node, payloads: dict, queue: str):
    """Every acknowledged enqueue is a job of `queue` with its payload, read from `node`'s own LMDB."""
    c = node.client(timeout=5.0, retry_for=15.0)
    replies = get_jobs(c, payloads)
    missing = {j: r["err"] for j, r in replies.items() if "ok" not in r}
    assert not missing, (f"{node.node_id}: {len(missing)} of {len(payloads)} acknowledged jobs are missing: "
                         f"{list(missing.items())[:5]}")
    wrong = [j for j, r in replies.items() if r["ok"]["queue"] != queue or r["ok"]["payload"] != payloads[j]]
    assert not wrong, f"{node.node_id}: jobs with the wrong queue or payload: {wrong[:5]}"


def assert_no_duplicates(node, acked: list, queue: str):
    distinct = set(acked)
    assert len(distinct) == len(acked), "two enqueues were answered with the same job id"
    row = queue_row(node.client(timeout=5.0, retry_for=15.0), queue)
    assert row["pending"] == len(distinct) and total_jobs(row) == len(distinct), (
        f"{node.node_id}: queue {queue} holds {row} for {len(distinct)} acknowledged enqueues (duplicates or losses)")


def enqueue_one_by_one(client: Client, queue: str, n: int) -> dict:
    payloads = {}
    for i in range(n):
        payload = {"i": i, "nonce": uuid.uuid4().hex}
        payloads[client.enqueue(queue, payload)] = payload
    return payloads


class FollowerCase:
    """A started cluster with a job leased out and `jobs` enqueued one by one (all converged), and
    the follower the test stops, changes and restarts."""

    def __init__(self, cluster, jobs: int):
        self.cluster = cluster
        self.follower = cluster.followers(cluster.start())[0]
        self.others = [n for n in cluster.nodes if n is not self.follower]
        self.client = cluster.client()
        self.leases = Leases()
        self.leases.take(self.client)
        self.payloads = enqueue_one_by_one(self.client, "jobs", jobs)
        cluster.wait_converged()

    def assert_follower_whole(self):
        """Every acknowledged job is on the follower, no job was leased twice, and every node agrees."""
        assert_acked_on(self.follower, self.payloads, "jobs")
        self.leases.take(self.client)
        self.leases.check(self.cluster.nodes)
        self.cluster.wait_converged()


def log_since(node, offset: int, actor: str = "raft") -> str:
    return node.read_log(actor, offset)


def stored_commit_index(node) -> int:
    import pysyncobj.pickle as ps_pickle

    try:
        with open(node.journal_path + ".meta", "rb") as f:
            return ps_pickle.loads(f.read()).get("raftCommitIndex", 0)
    except (OSError, ValueError, EOFError):
        return 0


def journal_last_index(node) -> int:
    return recovery.scan_journal(node.journal_path).last_index


# ----------------------------------------------------------------------- 1
@pytest.mark.timeout(120)
def test_leader_kill9_under_load_fails_over_and_keeps_every_acknowledged_enqueue(make_cluster):
    # Given a healthy cluster with jobs leased out and 10 clients enqueuing through all three nodes
    cluster = make_cluster()
    leader = cluster.start()
    leases = Leases()
    leases.take(cluster.client())
    load = Load(cluster.endpoints, "load", threads=10).start()
    try:
        load.wait(300, 30.0)
        # When the leader's processes are killed with SIGKILL
        survivors = [n for n in cluster.nodes if n is not leader]
        old = leader.raft_addr
        leader.kill9()
        killed_at = leader.killed_at

        # Then a surviving node names a new leader within the limit
        def new_leader():
            for n in survivors:
                s = n.try_status()
                if s and s["leader"] not in (None, old) and s["role"] in ("leader", "follower"):
                    return time.monotonic()
            return None

        failover = wait_for(new_leader, 15.0, interval=0.02, message="a new leader") - killed_at
        print(f"\nfailover: a new leader {failover:.2f}s after kill -9 of the leader "
              f"({load.count} enqueues acknowledged so far)")
        assert failover < FAILOVER_LIMIT_S, f"new leader only after {failover:.2f}s"
        new = cluster.wait_leader(survivors, timeout=10.0)
        assert new is not leader
        # And writes resume
        before = load.count
        load.wait(before + 200, 30.0, " after the failover")
        resumed = time.monotonic() - killed_at
        print(f"writes resumed: {load.count - before} more acknowledged, {resumed:.2f}s after the kill")
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    slowest = max(e.max_latency for e in load.enqueuers)
    print(f"{load.count} enqueues acknowledged by 10 clients; the slowest took {slowest:.2f}s")
    leases.take(cluster.client(nodes=survivors))
    # And every acknowledged enqueue is on both survivors, once
    cluster.wait_converged(survivors)
    for n in survivors:
        assert_acked_on(n, load.payloads, "load")
        assert_no_duplicates(n, load.acked, "load")
    # And the killed leader, started again, catches up to the same state
    started = time.monotonic()
    cluster.restart(leader)
    digests = cluster.wait_converged(timeout=30.0)
    print(f"killed leader restarted and caught up in {time.monotonic() - started:.2f}s; digests {digests}")
    assert_acked_on(leader, load.payloads, "load")
    leases.check(cluster.nodes)
    cluster.wait_converged()


# ----------------------------------------------------------------------- 2
@pytest.mark.timeout(120)
def test_follower_kill9_and_restart_before_any_snapshot_catches_up(make_cluster):
    # Given a cluster taking writes, with jobs leased out
    cluster = make_cluster()
    leader = cluster.start()
    follower = cluster.followers(leader)[0]
    leases = Leases()
    leases.take(cluster.client())
    load = Load(cluster.endpoints, "load", threads=4).start()
    try:
        load.wait(100, 20.0)
        # When a follower is killed with SIGKILL and the others take more writes
        follower.kill9()
        at_kill = load.count
        load.wait(at_kill + 150, 30.0, " while the follower is down")
        # And the follower is started again (same ports, same data dir)
        started = time.monotonic()
        cluster.restart(follower)
        load.wait(load.count + 100, 30.0, " after the restart")
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    # Then it catches up: same applied index, same digest, no snapshot involved
    digests = cluster.wait_converged(timeout=30.0)
    print(f"\nrestarted follower caught up {time.monotonic() - started:.2f}s after its start "
          f"({load.count} enqueues in all); digests {digests}")
    statuses = [n.try_status() for n in cluster.nodes]
    assert all(s["snapshot"] is None for s in statuses), [s["snapshot"] for s in statuses]
    assert_acked_on(follower, load.payloads, "load")
    assert_no_duplicates(follower, load.acked, "load")
    leases.take(cluster.client())
    leases.check(cluster.nodes)
    cluster.wait_converged()


# ----------------------------------------------------------------------- 3
@pytest.mark.timeout(150)
def test_follower_restarted_with_an_older_or_a_newer_lmdb_ends_equal(make_cluster, tmp_path):
    cluster = make_cluster()
    case = FollowerCase(cluster, jobs=40)
    follower, others, client, payloads = case.follower, case.others, case.client, case.payloads

    # -- LMDB from an EARLIER point than the journal --
    # Given a copy of the follower's LMDB taken while it was stopped
    assert follower.stop() == 0
    early = str(tmp_path / "early-lmdb")
    shutil.copytree(follower.lmdb_path, early)
    early_index = digest(follower)[0]
    # And more writes after it was started again
    cluster.restart(follower)
    payloads.update(enqueue_one_by_one(client, "jobs", 40))
    cluster.wait_converged()
    assert follower.stop() == 0
    later_index = digest(follower)[0]
    assert later_index > early_index
    # When its LMDB is replaced by the earlier copy and it starts
    shutil.rmtree(follower.lmdb_path)
    shutil.copytree(early, follower.lmdb_path)
    mark = follower.log_size()
    cluster.restart(follower)
    # Then it replays its journal from the copy's index and ends equal to the others
    cluster.wait_converged(timeout=30.0)
    started_line = [line for line in log_since(follower, mark).splitlines() if " at 127.0.0.1" in line]
    assert started_line and f"applied index {early_index}," in started_line[0], started_line
    assert_acked_on(follower, payloads, "jobs")

    # -- LMDB from a LATER point than the journal --
    # Given the follower stopped (its journal ends at J) while the others take more writes
    assert follower.stop() == 0
    journal_to = journal_last_index(follower)
    more_client = cluster.client(nodes=others)
    payloads.update(enqueue_one_by_one(more_client, "jobs", 40))
    cluster.wait_converged(others)
    # And a consistent copy of a running node's newer LMDB put in its place
    source = cluster.wait_leader(others)
    copy_lmdb(source.lmdb_path, follower.lmdb_path)
    copied_index = digest(follower)[0]
    assert copied_index > journal_to, f"copied LMDB at {copied_index} is not ahead of the journal (ends {journal_to})"
    # When it starts
    mark = follower.log_size()
    cluster.restart(follower)
    # Then it sets that LMDB aside (it is ahead of its log), rebuilds, catches up and ends equal
    digests = cluster.wait_converged(timeout=30.0)
    log = log_since(follower, mark)
    assert f"set aside LMDB at index {copied_index}: ahead of the log" in log, log[-3000:]
    assert any(name.startswith("lmdb.ahead-") for name in os.listdir(follower.data_dir))
    print(f"\nearlier LMDB at {early_index} (journal to {later_index}); later LMDB at {copied_index} "
          f"(journal to {journal_to}): both replaced and converged; digests {digests}")
    case.assert_follower_whole()


# ----------------------------------------------------------------------- 4
@pytest.mark.timeout(150)
def test_follower_behind_the_leaders_compaction_catches_up_by_snapshot(make_cluster):
    # Given a cluster that snapshots every 100 entries
    cluster = make_cluster(extra_args=["--snapshot-every", "100"])
    case = FollowerCase(cluster, jobs=20)
    follower, others, payloads = case.follower, case.others, case.payloads
    # When a follower is stopped
    assert follower.stop() == 0
    behind = journal_last_index(follower)
    # And the others take enough single-entry writes to snapshot well past it
    more = cluster.client(nodes=others)
    written = time.monotonic()
    payloads.update(enqueue_one_by_one(more, "jobs", 400))
    print(f"\n400 single enqueues in {time.monotonic() - written:.2f}s")

    def compacted_past():
        s = cluster.wait_leader(others).try_status()
        return s if s and s["snapshot"] and s["snapshot"]["index"] > behind + 250 else None

    status = wait_for(compacted_past, 20.0, interval=0.1, message=f"a leader snapshot well past index {behind}")
    assert status["journal_entries"] < 250, status["journal_entries"]
    cluster.wait_converged(others)
    # And the follower is started again
    mark = follower.log_size()
    started = time.monotonic()
    cluster.restart(follower)
    # Then it catches up from a snapshot: same applied index, same digest
    digests = cluster.wait_converged(timeout=45.0)
    took = time.monotonic() - started
    log = log_since(follower, mark)
    assert "installed snapshot at raft index" in log, log[-3000:]
    installed = [line for line in log.splitlines() if "installed snapshot at raft index" in line]
    print(f"follower stopped at index {behind}, leader snapshot at {status['snapshot']['index']}; "
          f"it caught up in {took:.2f}s: {installed[0].split(': ', 1)[-1]}; digests {digests}")
    case.assert_follower_whole()


# ----------------------------------------------------------------------- 6
@pytest.mark.timeout(150)
def test_durable_node_journal_holds_every_acknowledged_write_and_survives_a_power_cut(make_cluster, tmp_path):
    # Given a cluster whose node n1 runs --durable, and clients writing through n1 only
    cluster = make_cluster(node_args={"n1": ["--durable"]})
    cluster.start()
    durable = cluster["n1"]
    assert durable.try_status()["durable"] is True
    leases = Leases()
    leases.take(cluster.client(nodes=[durable]))
    load = Load(durable.endpoint, "load", threads=3, retry_for=2.0).start()
    try:
        load.wait(150, 30.0)
        # When n1 is killed with SIGKILL right after acknowledged writes
        durable.kill9()
    finally:
        load.stop()  # writes in flight at the kill fail (n1 is gone): not acknowledged
    acked = set(load.acked)
    assert len(acked) >= 150
    synced_line = open(os.path.join(durable.raft_dir, "journal.synced")).read().split()
    synced_index, synced_offset = int(synced_line[0]), int(synced_line[1])
    # Then (a) every acknowledged job id is in its journal, inside the part it had synced
    in_journal = journal_job_ids(durable.journal_path)
    assert not acked - in_journal, f"{len(acked - in_journal)} acknowledged jobs are not in the journal"
    in_synced = journal_job_ids(durable.journal_path, end=synced_offset)
    assert not acked - in_synced, (f"{len(acked - in_synced)} acknowledged jobs lie past the synced offset "
                                   f"{synced_offset} (journal ends at {journal_end(durable.journal_path)})")
    print(f"\n{len(acked)} acknowledged, all in n1's journal before its synced offset {synced_offset} "
          f"(applied {synced_index}; journal ends at {journal_end(durable.journal_path)})")

    # (b) When power is lost: the journal keeps only what was synced, LMDB (never synced) is gone
    set_journal_end(durable.journal_path, synced_offset)
    os.truncate(durable.journal_path, synced_offset)
    shutil.rmtree(durable.lmdb_path)
    assert not recovery.scan_journal(durable.journal_path).torn
    assert not acked - journal_job_ids(durable.journal_path)
    # And n1 starts again while the others keep going
    more = enqueue_one_by_one(cluster.client(nodes=[n for n in cluster.nodes if n is not durable]), "more", 20)
    started = time.monotonic()
    cluster.restart(durable)
    # Then every acknowledged job is there, on n1 and on the others, and the replicas are equal
    digests = cluster.wait_converged(timeout=30.0)
    print(f"n1 back after the power cut, caught up in {time.monotonic() - started:.2f}s; digests {digests}")
    for n in cluster.nodes:
        assert_acked_on(n, load.payloads, "load")
        assert_acked_on(n, more, "more")
    # And after another kill -9 with its LMDB left in place, n1 does not trust that (unsynced) LMDB
    lmdb_index = digest(durable)[0]
    durable.kill9()
    mark = durable.log_size()
    cluster.restart(durable)
    cluster.wait_converged(timeout=30.0)
    log = log_since(durable, mark)
    assert "set aside LMDB after an unclean stop in --durable mode" in log, log[-3000:]
    assert "applied index 0," in log, log[-3000:]
    print(f"second kill -9: n1 set its LMDB (at {lmdb_index}) aside and rebuilt it from its journal")
    assert_acked_on(durable, load.payloads, "load")
    leases.take(cluster.client())
    leases.check(cluster.nodes)
    cluster.wait_converged()


def _garbage_after_the_last_record(path: str) -> str:
    end = journal_end(path)
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(os.urandom(64))
    set_journal_end(path, end + 64)
    return "appended garbage"


def _last_record_cut_short(path: str) -> str:
    end = journal_end(path)
    os.truncate(path, end - 10)  # the header still names `end`
    return "last record cut short"


def _last_record_length_flipped(path: str) -> str:
    start = journal_records(path)[-1][0]
    with open(path, "r+b") as f:
        f.seek(start + 2)
        byte = f.read(1)
        f.seek(start + 2)
        f.write(bytes([byte[0] ^ 0x5A]))
    return "last record's length field flipped"


@pytest.mark.timeout(180)
def test_durable_node_with_a_torn_journal_tail_cuts_it_and_applies_only_the_good_prefix(make_cluster, tmp_path):
    # Given a cluster (n1 --durable) with some state, every node at the same index
    cluster = make_cluster(node_args={"n1": ["--durable"]})
    cluster.start()
    n1 = cluster["n1"]
    client = cluster.client()
    payloads = enqueue_one_by_one(client, "jobs", 30)
    cluster.wait_converged()
    # pysyncobj stores the commit index lazily (once a second): wait until n1's is on disk
    commit = n1.try_status()["commit_index"]
    wait_for(lambda: stored_commit_index(n1) >= commit, 10.0, interval=0.1, message="n1's commit index stored")
    # And the whole cluster stopped cleanly, n1 first
    for n in cluster.nodes:
        assert n.stop() == 0
    for corrupt in (_garbage_after_the_last_record, _last_record_cut_short, _last_record_length_flipped):
        # When n1's journal tail is torn
        before = recovery.scan_journal(n1.journal_path)
        lmdb_before = digest(n1)[0]
        what = corrupt(n1.journal_path)
        torn = recovery.scan_journal(n1.journal_path)
        assert torn.torn, what
        # And n1 starts alone (no leader: it applies only what its own journal holds)
        mark = n1.log_size()
        n1.start()
        n1.wait_up(need_leader=False)
        # Then it cut the journal, says so, and serves
        log = log_since(n1, mark)
        assert "cutting it after index" in log and "cut torn journal tail" in log, log[-3000:]
        after = recovery.scan_journal(n1.journal_path)
        assert not after.torn and after.last_index == torn.last_index <= before.last_index
        if lmdb_before > after.last_index:
            # LMDB had applied entries the journal lost: it is set aside and rebuilt from the journal
            assert f"set aside LMDB at index {lmdb_before}: ahead of the log" in log, log[-3000:]
        settled = wait_for(lambda: (lambda s: s if s and s["applied_index"] == s["commit_index"] else None)(
            n1.try_status()), 15.0, message="n1 to apply its journal")
        n1.client(timeout=2.0, retry_for=5.0).queues()
        # And its state is exactly the journal's good prefix replayed, no garbage applied
        lmdb_index, lmdb_digest = digest(n1)
        assert lmdb_index <= after.last_index
        expected = replay_digest(n1.journal_path, lmdb_index, str(tmp_path))
        assert (lmdb_index, lmdb_digest) == expected, f"{what}: n1 state differs from its journal's replay"
        print(f"\n{what}: journal cut after index {after.last_index} (was {before.last_index}); LMDB was at "
              f"{lmdb_before}{' (set aside)' if lmdb_before > after.last_index else ''}; n1 applied to "
              f"{lmdb_index} (commit {settled['commit_index']}), equal to a replay of the good prefix")
        assert n1.stop() == 0
    # And once the cluster is back, n1 catches up and every replica is equal
    for n in cluster.nodes:
        n.start()
    cluster.wait_leader(timeout=30.0)
    digests = cluster.wait_converged(timeout=30.0)
    print(f"cluster back; digests {digests}")
    for n in cluster.nodes:
        assert_acked_on(n, payloads, "jobs")
    leases = Leases()
    leases.take(cluster.client())
    leases.check(cluster.nodes)
    cluster.wait_converged()


# ----------------------------------------------------------------------- 7
@pytest.mark.timeout(150)
def test_whole_cluster_kill9_and_restart_in_random_order_loses_nothing(make_cluster):
    seed = int(os.environ.get("JOBBIE_TEST_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    print(f"\nseed {seed} (set JOBBIE_TEST_SEED to repeat)")
    # Given a cluster taking writes through all nodes, with jobs leased out
    cluster = make_cluster()
    cluster.start()
    leases = Leases()
    leases.take(cluster.client())
    load = Load(cluster.endpoints, "load", threads=5).start()
    try:
        load.wait(200, 30.0)
        # When every node is killed with SIGKILL, in random order
        kill_order = rng.sample(cluster.nodes, len(cluster.nodes))
        for n in kill_order:
            n.kill9()
        at_kill = load.count
        # And started again in random order, with random pauses
        start_order = rng.sample(cluster.nodes, len(cluster.nodes))
        pauses = [round(rng.uniform(0.0, 1.5), 2) for _ in start_order]
        print(f"killed {[n.node_id for n in kill_order]} after {at_kill} acknowledged; starting "
              f"{[n.node_id for n in start_order]} with pauses {pauses}")
        restarted = time.monotonic()
        for n, pause in zip(start_order, pauses):
            time.sleep(pause)
            n.start()
        cluster.wait_leader(timeout=30.0)
        print(f"leader back {time.monotonic() - restarted:.2f}s after the first start")
        # Then the clients' retries go through and writes go on
        load.wait(at_kill + 150, 40.0, " after the restart")
    finally:
        load.stop()
    assert not load.errors, load.errors[:5]
    # And nothing acknowledged is lost, nothing is doubled, every replica is equal
    digests = cluster.wait_converged(timeout=30.0)
    print(f"{load.count} enqueues acknowledged; digests {digests}")
    for n in cluster.nodes:
        assert_acked_on(n, load.payloads, "load")
        assert_no_duplicates(n, load.acked, "load")
    leases.take(cluster.client())
    leases.check(cluster.nodes)
    cluster.wait_converged()


@pytest.mark.timeout(180)
def test_a_voter_is_added_and_removed_at_runtime_without_stopping_the_others(make_cluster):
    from .cluster import ClusterNode, free_port

    cluster = make_cluster()
    cluster.start()
    client = cluster.client()
    before = [client.enqueue("members", i) for i in range(20)]
    # Given a fourth node, started first (cluster_add checks that its raft port answers)
    import socket

    port = free_port()
    n4 = ClusterNode(os.path.join(os.path.dirname(cluster.nodes[0].data_dir), "n4"), "n4", port,
                     [int(n.raft_addr.rsplit(":", 1)[1]) for n in cluster.nodes], raft_password=cluster.raft_password)
    cluster.nodes.append(n4)  # stopped with the others at teardown
    n4.start(rejoin=True)

    def raft_port_open():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(raft_port_open, 30, interval=0.1, message="n4's raft port")
    assert client.call("cluster_add", address=n4.raft_addr) == {}
    n4.wait_up(60, need_leader=True)
    # Then it catches up, the others keep serving, and every replica is identical
    after = [client.enqueue("members", i) for i in range(20)]
    cluster.wait_converged(timeout=60)
    digests = {n.node_id: digest(n) for n in cluster.nodes}
    assert len(set(digests.values())) == 1, digests
    with Client(n4.endpoint, timeout=2.0, retry_for=10.0) as direct:
        assert all(direct.get_job(j)["queue"] == "members" for j in before + after)
    leader = cluster.wait_leader()
    peers = {p["address"] for p in leader.probe().call("cluster_status")["peers"]}
    assert n4.raft_addr in peers
    # When it is removed again, the cluster goes on without it
    assert client.call("cluster_remove", address=n4.raft_addr) == {}
    wait_for(lambda: n4.raft_addr not in {p["address"] for p in
                                          cluster.wait_leader().probe().call("cluster_status")["peers"]},
             30, message="the leader to drop n4")
    n4.stop()
    cluster.nodes.remove(n4)
    assert client.enqueue("members", "after-removal")
    cluster.wait_converged(timeout=60)
