"""What this node offers, for its capability announcements: CPU, memory, GPUs, free storage,
models held, job kinds and price hints.

Rules:
1. torch is never imported in the daemon: importing it costs about 1 s of CPU and some
   200 MB of memory, and a torch loop in the event loop's process starves it (DESIGN.md).
   GPUs are probed once, at start, in a subprocess (`gpu_probe`); without the probe, or
   while it runs, the node announces no GPU.
2. A node without torch installed accepts no job kinds: it cannot run them.
3. psutil and the block store are read in a worker thread (the caller's job).
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any

import structlog
import trio

log = structlog.get_logger(__name__)

PROBE_TIMEOUT_S = 60.0
PROBE_OUTPUT_BYTES_MAX = 64 * 1024
GPUS_MAX = 16
PROBE_SCRIPT = """
import json
try:
    import torch
except ImportError:
    print(json.dumps({"torch": False, "gpus": []}))
    raise SystemExit(0)
gpus = []
if torch.cuda.is_available():
    for index in range(torch.cuda.device_count()):
        device = torch.cuda.get_device_properties(index)
        gpus.append({"name": str(device.name)[:128], "memory_bytes": int(device.total_memory)})
print(json.dumps({"torch": True, "gpus": gpus}))
"""


@dataclass(frozen=True, slots=True)
class Hardware:
    torch: bool
    gpus: tuple[tuple[str, int], ...]
    probed: bool


def torch_installed() -> bool:
    """Whether torch can be imported, without importing it (rule 1)."""
    return importlib.util.find_spec("torch") is not None


def unprobed_hardware() -> Hardware:
    return Hardware(torch=torch_installed(), gpus=(), probed=False)


async def probe_hardware() -> Hardware:
    """Import torch in a subprocess and list the CUDA devices it sees (rule 1)."""
    with trio.move_on_after(PROBE_TIMEOUT_S):
        result = await trio.run_process(
            [sys.executable, "-c", PROBE_SCRIPT],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode == 0 and len(result.stdout) <= PROBE_OUTPUT_BYTES_MAX:
            return _parse_probe(result.stdout)
        log.warning("registry.gpu_probe_failed", returncode=result.returncode)
        return unprobed_hardware()
    log.warning("registry.gpu_probe_timed_out", timeout_s=PROBE_TIMEOUT_S)
    return unprobed_hardware()


def _parse_probe(output: bytes) -> Hardware:
    try:
        found = json.loads(output)
        gpus = tuple(
            (str(gpu["name"])[:128], int(gpu["memory_bytes"])) for gpu in found["gpus"]
        )[:GPUS_MAX]
        return Hardware(torch=bool(found["torch"]), gpus=gpus, probed=True)
    except (ValueError, KeyError, TypeError) as error:
        log.warning("registry.gpu_probe_unreadable", error=str(error))
        return unprobed_hardware()


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """What psutil and the block store say now (read in a worker thread)."""

    cpu_cores: int
    memory_bytes: int
    storage_free_bytes: int
    pinned_roots: tuple[str, ...]


class StorageClosed(Exception):
    """The block store was closed while we read it: the node is stopping."""


def read_resources(storage: Any, storage_dir: Any, quota_bytes: int) -> Resources:
    """Sync: psutil and the block store (call from a worker thread). The storage service
    closes its store at shutdown in its own task, possibly during this read."""
    import psutil

    try:
        statistics = storage.stat()
        pinned_roots = tuple(str(cid) for cid in storage.pins())
    except sqlite3.ProgrammingError as error:  # "Cannot operate on a closed database"
        raise StorageClosed(str(error)) from None
    free_in_quota = max(0, quota_bytes - statistics.size_bytes)
    try:
        free_on_disk = psutil.disk_usage(str(storage_dir)).free
    except OSError:
        free_on_disk = free_in_quota
    return Resources(
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_bytes=psutil.virtual_memory().total,
        storage_free_bytes=min(free_in_quota, free_on_disk),
        pinned_roots=pinned_roots,
    )


def price_hints(config_hints: tuple[str, ...]) -> dict[str, str]:
    """'KIND=UNITS' strings from the config (checked there) as a map."""
    return dict(hint.partition("=")[::2] for hint in config_hints)


def capability_fields(
    *,
    hardware: Hardware,
    resources: Resources,
    models: list[str],
    job_kinds: tuple[str, ...],
    hints: tuple[str, ...],
    addrs: list[str],
    version: str,
) -> dict[str, Any]:
    """The kind-specific fields of our capability body (messages.SCHEMAS)."""
    return {
        "cpu_cores": resources.cpu_cores,
        "memory_bytes": resources.memory_bytes,
        "gpus": [{"name": name, "memory_bytes": memory} for name, memory in hardware.gpus],
        "storage_free_bytes": resources.storage_free_bytes,
        "models": sorted(set(models))[:256],
        "job_kinds": list(dict.fromkeys(job_kinds)) if hardware.torch else [],  # rule 2
        "price_hints": price_hints(hints) if hardware.torch else {},
        "addrs": [address[:256] for address in addrs[:8]],
        "version": version[:32],
    }
