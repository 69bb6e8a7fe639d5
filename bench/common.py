"""Measurement helpers: every figure is the median of several runs, with min and max."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measurement:
    """Seconds (or another unit) of repeated runs of one benchmark cell."""

    name: str
    runs: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    unit: str = "s"

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "median": self.median, "min": min(self.runs), "max": max(self.runs)}


def measure(
    name: str,
    fn: Callable[[], float],
    repeats: int,
    params: dict[str, Any] | None = None,
    unit: str = "s",
) -> Measurement:
    """Run ``fn`` (which returns its own measured value) ``repeats`` times."""
    fn()  # warm-up: imports, caches, page cache
    return Measurement(name, [fn() for _ in range(repeats)], params or {}, unit)


def python_seconds(code: str) -> float:
    """Run ``code`` in a fresh interpreter; it must print one float."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
