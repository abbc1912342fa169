"""Prometheus text exposition of the node's counters (SPEC 3.7)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

# Fan-out latency buckets, seconds: from an event's commit to its bytes leaving.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
           0.5, 1.0, 2.5)


class Histogram:
    """A cumulative histogram in the Prometheus style."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.total = 0

    def observe(self, value: float, n: int = 1) -> None:
        """Record ``n`` observations of ``value`` seconds."""
        self.counts[bisect.bisect_left(BUCKETS, value)] += n
        self.sum += value * n
        self.total += n

    def lines(self, name: str, help_text: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        acc = 0
        for bound, c in zip(BUCKETS, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{le="{bound}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.total}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.total}")
        return out


def render(gauges: Iterable[tuple[str, str, str, float | int]],
           labelled: Iterable[tuple[str, str, str, dict[str, int]]],
           histograms: Iterable[tuple[str, str, Histogram]]) -> bytes:
    """Prometheus text: ``(name, type, help, value)`` rows, labelled counters, histograms."""
    lines: list[str] = []
    for name, kind, help_text, value in gauges:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    for name, label, help_text, values in labelled:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        lines += [f'{name}{{{label}="{k}"}} {v}' for k, v in values.items()]
    for name, help_text, hist in histograms:
        lines += hist.lines(name, help_text)
    return ("\n".join(lines) + "\n").encode()
