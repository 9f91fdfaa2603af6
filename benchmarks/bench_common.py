"""What every benchmark script shares: percentiles and how figures are reported.

Scripts run as `python benchmarks/NAME.py`, so this directory is on sys.path first.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psutil


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` of the sorted values (nearest rank); 0.0 for none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_with_children(pid: int) -> float:
    """``cpu_seconds`` of a process and of every live process under it (a node's transfer
    lanes): those still running, which /proc's cutime does not count yet."""
    total = cpu_seconds(pid)
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += cpu_seconds(child.pid)
    return total


def report(figures: dict[str, Any], out: Path | None) -> None:
    """Stamp the figures with the machine and the date, print them, and save them."""
    figures["machine"] = (
        f"{platform.machine()}, {psutil.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    figures["date"] = time.strftime("%Y-%m-%d")
    text = json.dumps(figures, indent=1)
    print(text)
    if out is not None:
        out.write_text(text)
