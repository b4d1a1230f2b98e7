"""Latency windows for cluster_status: the last N samples, summarised as p50/p90/p99/max.

Pure and cheap: `record` is an array store; `summary` sorts at most
`size` samples and is called only when a status report is built.
"""
from __future__ import annotations

from array import array


class Window:
    """The most recent `size` samples of one measure (milliseconds, or counts)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self.samples = array("d", [0.0] * size)
        self.count = 0  # samples ever recorded

    def record(self, value: float):
        self.samples[self.count % self.size] = value
        self.count += 1

    def summary(self) -> dict:
        n = min(self.count, self.size)
        if n == 0:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
        values = sorted(self.samples[:n])

        def pick(q):
            return round(values[min(n - 1, int(q * n))], 3)

        return {"count": self.count, "p50": pick(0.50), "p90": pick(0.90), "p99": pick(0.99),
                "max": round(values[-1], 3)}
