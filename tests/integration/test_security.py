"""Requests and set-ups that must not brick or expose a node."""
from __future__ import annotations

import os
import stat

import pytest

from jobbie.transport.errors import JobbieError


def test_cluster_add_of_a_peer_that_does_not_answer_is_refused_and_writes_go_on(node):
    client = node.client(retry_for=5.0)
    assert client.enqueue("before", 1)
    # When a voter that does not answer is added to a single node
    with pytest.raises(JobbieError) as info:
        client.call("cluster_add", address="127.0.0.1:9")
    # Then the change is refused with a clear error, the membership is unchanged and writes keep working
    assert info.value.code == "FAILED_PRECONDITION", info.value
    assert info.value.reason == "peer_unreachable"
    assert "127.0.0.1:9" in info.value.message
    assert client.enqueue("after", 2)
    assert node.status()["role"] == "leader"
    assert not node.status()["peers"]


def test_data_dir_and_its_files_are_private(node):
    # Given a running node that has taken writes
    node.client().enqueue("q", {"secret": True})
    # Then its data dir, every folder in it and every file it wrote are for its owner only
    loose = []
    for root, dirs, files in os.walk(node.data_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            if os.path.islink(path) or stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            if os.lstat(path).st_mode & 0o077:
                loose.append((path, oct(os.lstat(path).st_mode & 0o777)))
    assert not os.stat(node.data_dir).st_mode & 0o077, oct(os.stat(node.data_dir).st_mode)
    assert not loose, loose[:10]


def test_a_long_data_dir_path_gets_a_private_run_dir_not_a_predictable_shared_one(tmp_path):
    from jobbie.actors.config import pick_run_dir

    deep = tmp_path / ("d" * 120)
    run_dir = pick_run_dir(str(deep))
    try:
        assert len(f"ipc://{run_dir}/admission.sock") < 100
        assert not os.stat(run_dir).st_mode & 0o077
        assert run_dir != pick_run_dir(str(deep)) or os.path.dirname(run_dir) == str(deep)
    finally:
        if os.path.isdir(run_dir) and not run_dir.startswith(str(tmp_path)):
            os.rmdir(run_dir)
