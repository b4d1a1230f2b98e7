"""The chaos harness: a cluster of real `jobbie server` processes under load and seeded faults.

`jobbie chaos` and the integration tests share it:
- nodes.py: one node's processes, started, stopped and killed by verified pid;
- cluster.py: a cluster on free loopback ports, leader and convergence waits, LMDB digests;
- proxy.py: TCP proxies in front of the client ports, for the drop-connections fault;
- load.py: producers and library workers that record what was acknowledged;
- faults.py: the seeded fault plan, its application, and the time to recover;
- run.py: one run end to end, its figures and its invariants.
"""
from __future__ import annotations

from .cluster import Cluster, ReplicasDiffer, digest, digest_path
from .nodes import ClusterNode, HarnessError, pids_writing_under, running, wait_for
from .run import ChaosRun, broken

__all__ = ["ChaosRun", "Cluster", "ClusterNode", "HarnessError", "ReplicasDiffer", "broken", "digest",
           "digest_path", "pids_writing_under", "running", "wait_for"]
