"""`prsm-node store ...`: the block store's CLI, a client of the store_* control methods.

Rules (as cli.py): no trio or libp2p imports; `--json` prints exactly one JSON object on
stdout; errors are one line on stderr (cli.main turns client errors into exit code 1).
Paths are made absolute here, because the node resolves them in its own working directory.
Long calls (add, get, pin, import-car) wait up to `--timeout` seconds; in human mode a
second connection polls `store_progress` and draws a progress bar on stderr.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

store_app = typer.Typer(
    help="Add, fetch, pin and export content-addressed files.", no_args_is_help=True
)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data dir (default: $PRSM_HOME, else ~/.prsm).", show_default=False
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds to wait for the node to finish.")
]
PROGRESS_POLL_S = 0.2
PROGRESS_SIZE_MIN = 8 * 1024 * 1024
"""Files smaller than this are added without a progress bar: it would only flicker."""


def _socket(data_dir: Path | None) -> Path:
    from prsm_node.datadir import DataDir, default_data_dir

    return DataDir((data_dir or default_data_dir()).expanduser().absolute()).socket_path


def _call(
    data_dir: Path | None, method: str, params: dict[str, Any] | None = None, timeout_s: float = 60
) -> Any:
    from prsm_node.control import ControlClient

    with ControlClient(_socket(data_dir), timeout_s=timeout_s) as client:
        return client.call(method, params)


def _emit(result: dict[str, Any], json_output: bool, text: str) -> None:
    typer.echo(json.dumps(result) if json_output else text)


def _long_call(
    data_dir: Path | None,
    method: str,
    params: dict[str, Any],
    *,
    timeout_s: float,
    show_progress: bool,
) -> Any:
    """Call `method`; meanwhile (human mode) poll its progress on a second connection."""
    if not show_progress:
        return _call(data_dir, method, params, timeout_s)
    operation_id = secrets.token_hex(8)
    stop = threading.Event()
    poller = threading.Thread(
        target=_draw_progress, args=(data_dir, operation_id, stop), daemon=True
    )
    poller.start()
    try:
        return _call(data_dir, method, params | {"operation_id": operation_id}, timeout_s)
    finally:
        stop.set()
        poller.join()


def _draw_progress(data_dir: Path | None, operation_id: str, stop: threading.Event) -> None:
    from prsm_node.control import ControlClient, ControlClientError

    shown = False
    with ControlClient(_socket(data_dir), timeout_s=5) as client:
        while not stop.wait(PROGRESS_POLL_S):
            try:
                progress = client.call("store_progress", {"operation_id": operation_id})
            except ControlClientError:
                continue  # not started yet, or the node is busy: try again
            assert isinstance(progress, dict)
            sys.stderr.write("\r" + _progress_line(progress))
            sys.stderr.flush()
            shown = True
    if shown:
        sys.stderr.write("\n")


def _progress_line(progress: dict[str, Any]) -> str:
    done, total = progress["bytes_done"], progress["bytes_total"]
    if total:
        filled = int(30 * min(done, total) / total)
        bar = "#" * filled + "-" * (30 - filled)
        return f"{progress['kind']} [{bar}] {done / 1e6:8.1f} / {total / 1e6:.1f} MB"
    blocks = f"{progress['blocks_done']}/{progress['blocks_total'] or '?'} blocks"
    return f"{progress['kind']} {blocks}, {done / 1e6:.1f} MB"


@store_app.command("add")
def store_add(
    path: Path,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    timeout_s: TimeoutOption = 3600.0,
) -> None:
    """Add a file: chunk, hash and pin it, announce it; prints its root CID."""
    source = path.expanduser().absolute()
    if not source.is_file():
        typer.echo(f"error: {path} is not a file", err=True)
        raise typer.Exit(1)
    large = source.stat().st_size >= PROGRESS_SIZE_MIN
    result = _long_call(
        data_dir,
        "store_add",
        {"path": str(source)},
        timeout_s=timeout_s,
        show_progress=large and not json_output,
    )
    _emit(result, json_output, result["cid"])


@store_app.command("get")
def store_get(
    cid: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the file here (default: ./CID).")
    ] = None,
    no_pin: Annotated[bool, typer.Option("--no-pin", help="Do not pin what is fetched.")] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    timeout_s: TimeoutOption = 3600.0,
) -> None:
    """Fetch a file (from peers as needed, resuming what is stored) and write it out."""
    target = (output or Path(cid)).expanduser().absolute()
    params = {"cid": cid, "output": str(target), "pin": not no_pin}
    result = _long_call(
        data_dir, "store_get", params, timeout_s=timeout_s, show_progress=not json_output
    )
    _emit(
        result,
        json_output,
        f"{target}: {result['size']} bytes, {result['blocks_fetched']} of "
        f"{result['blocks_total']} blocks fetched from {len(result['bytes_by_peer'])} peers",
    )


@store_app.command("pin")
def store_pin(
    cid: str,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    timeout_s: TimeoutOption = 3600.0,
) -> None:
    """Pin a root, fetching whatever of its DAG is missing."""
    result = _long_call(
        data_dir, "store_pin", {"cid": cid}, timeout_s=timeout_s, show_progress=not json_output
    )
    _emit(result, json_output, f"pinned {cid} ({result['blocks_total']} blocks)")


@store_app.command("unpin")
def store_unpin(cid: str, data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Unpin a root; its blocks become collectable."""
    result = _call(data_dir, "store_unpin", {"cid": cid})
    _emit(result, json_output, f"unpinned {cid}")


@store_app.command("ls")
def store_ls(
    blocks: Annotated[bool, typer.Option("--blocks", help="List blocks, not pins.")] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """List pinned roots (or, with --blocks, stored blocks)."""
    result = _call(data_dir, "store_ls", {"blocks": blocks})
    if blocks:
        text = "\n".join(f"{row['cid']}  {row['size']}" for row in result["blocks"])
    else:
        text = "\n".join(result["pins"])
    _emit(result, json_output, text or "(none)")


@store_app.command("stat")
def store_stat(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Show the store's size, quota, pins and exchange counters."""
    result = _call(data_dir, "store_stat")
    counters = result["counters"]
    text = (
        f"blocks {result['block_count']}, {result['size_bytes']} of {result['quota_bytes']} "
        f"bytes, {result['pinned_root_count']} pinned roots\n"
        f"served {counters['blocks_served']} blocks ({counters['bytes_served']} bytes), "
        f"fetched {counters['blocks_fetched']} blocks ({counters['bytes_fetched']} bytes)"
    )
    _emit(result, json_output, text)


@store_app.command("gc")
def store_gc(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Remove every unpinned block."""
    result = _call(data_dir, "store_gc", timeout_s=3600)
    _emit(
        result,
        json_output,
        f"removed {result['removed_count']} blocks, freed {result['freed_bytes']} bytes",
    )


@store_app.command("verify")
def store_verify(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Rehash every block; quarantine and report corrupt ones (exit code 1 if any)."""
    result = _call(data_dir, "store_verify", timeout_s=3600)
    lines = [f"checked {result['checked_count']} blocks"]
    lines += [f"corrupt (quarantined): {name}" for name in result["corrupt"]]
    lines += [f"missing file: {cid}" for cid in result["missing"]]
    _emit(result, json_output, "\n".join(lines))
    if not result["ok"]:
        raise typer.Exit(1)


@store_app.command("export-car")
def store_export_car(
    root: str,
    file: Path,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    timeout_s: TimeoutOption = 3600.0,
) -> None:
    """Write ROOT's DAG as a CARv1 file (readable by any IPFS node)."""
    target = file.expanduser().absolute()
    result = _call(data_dir, "store_export_car", {"cid": root, "path": str(target)}, timeout_s)
    _emit(result, json_output, f"{target}: {result['blocks']} blocks, {result['size']} bytes")


@store_app.command("import-car")
def store_import_car(
    file: Path,
    no_pin: Annotated[bool, typer.Option("--no-pin", help="Do not pin the roots.")] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    timeout_s: TimeoutOption = 3600.0,
) -> None:
    """Import a CARv1 file (every block verified); pins its complete roots."""
    source = file.expanduser().absolute()
    result = _long_call(
        data_dir,
        "store_import_car",
        {"path": str(source), "pin": not no_pin},
        timeout_s=timeout_s,
        show_progress=not json_output,
    )
    _emit(result, json_output, "\n".join(result["roots"]))
