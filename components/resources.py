"""What this process may use, read once where the suite sizes its thread pools (training, the model, serving)."""

from __future__ import annotations

import math
import os


def cpu_limit() -> int:
    """CPUs this process may use: the cgroup quota when set, else the affinity mask."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()
        if quota != "max":
            return max(1, math.floor(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
