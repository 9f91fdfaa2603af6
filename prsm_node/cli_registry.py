"""`prsm-node models|nodes|offers`: the gossiped registry from the command line.

Rules (as cli.py): no trio or libp2p imports; `--json` prints exactly one JSON object (a
list command prints one object holding the list: `{"models": [...]}`, `{"nodes": [...]}`,
`{"offers": [...]}`); an error the node reports is one line on stderr and exit code 1.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from prsm_node.cli_ledger import DataDirOption, JsonOption, _call, _emit

models_app = typer.Typer(help="Models announced in the registry.", no_args_is_help=True)

LimitOption = Annotated[int, typer.Option("--limit", help="At most this many rows.")]


def _age(ms: int) -> str:
    seconds = max(0, ms - int(time.time() * 1000)) // 1000
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def _table(
    result: dict[str, Any], name: str, header: str, row: Any, json_output: bool
) -> None:
    """Print `result[name]` as a table (one line per item from `row`) or as JSON."""
    lines = [header] + [row(item) for item in result[name]] if result[name] else [f"no {name}"]
    _emit(result, json_output, lines)


def _model_row(model: dict[str, Any]) -> str:
    tags = ",".join(model["tags"]) or "-"
    return (
        f"{model['name'][:24]:<24} {model['architecture'][:16]:<16} "
        f"{model['size_bytes']:>10}  {tags[:24]:<24} {model['manifest_cid']}"
    )


def _node_row(node: dict[str, Any]) -> str:
    if not node["capabilities_known"]:
        return f"{node['peer_id']:<54} (holds the model; capabilities unknown)"
    gpus = ",".join(gpu["name"] for gpu in node["gpus"]) or "-"
    jobs = ",".join(node["job_kinds"]) or "-"
    return (
        f"{node['peer_id']:<54} {node['cpu_cores']:>4} {_gib(node['memory_bytes']):>10} "
        f"{gpus[:24]:<24} {jobs[:22]:<22} {len(node['models'])}"
    )


def _offer_row(offer: dict[str, Any]) -> str:
    return (
        f"{offer['key'][:24]:<24} {offer['job_kind'][:14]:<14} {offer['price']:>14} "
        f"{_age(offer['expires_at_ms']):>8}  {offer['model_cid']}"
    )


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Option("--name", help="Exact model name.")] = None,
    architecture: Annotated[str | None, typer.Option("--arch", help="Architecture.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="One tag.")] = None,
    limit: LimitOption = 100,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Models in this node's registry view, by name, architecture or tag."""
    params = {"name": name, "architecture": architecture, "tag": tag, "limit": limit}
    result = _call(data_dir, "registry_models", params)
    header = f"{'NAME':<24} {'ARCHITECTURE':<16} {'SIZE':>10}  {'TAGS':<24} MANIFEST CID"
    _table(result, "models", header, _model_row, json_output)


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="Model name or manifest CID.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """One model: its announcements and the nodes that hold it."""
    result = _call(data_dir, "registry_model", {"model": model})
    lines = []
    for item in result["models"]:
        lines += [
            f"name          {item['name']}",
            f"architecture  {item['architecture']}",
            f"tags          {', '.join(item['tags']) or '-'}",
            f"manifest cid  {item['manifest_cid']}",
            f"size          {item['size_bytes']} bytes",
            f"owner         {item['signer']}",
            f"announced by  {item['peer_id']} (expires in {_age(item['expires_at_ms'])})",
            "",
        ]
    lines.append(f"held by {len(result['holders'])} node(s):")
    lines += [f"  {holder['peer_id']}" for holder in result["holders"]]
    _emit(result, json_output, lines)


@models_app.command("announce")
def models_announce(
    name: Annotated[str, typer.Argument(help="Model name.")],
    manifest_cid: Annotated[str, typer.Argument(help="CID of the model's manifest.")],
    architecture: Annotated[str, typer.Option("--arch", help="Architecture.")] = "unknown",
    tags: Annotated[list[str] | None, typer.Option("--tag", help="Tag (repeatable).")] = None,
    size_bytes: Annotated[int, typer.Option("--size", help="Size in bytes.")] = 0,
    description: Annotated[str, typer.Option("--description")] = "",
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Announce a model this node holds, signed by this node's key."""
    params = {
        "name": name,
        "architecture": architecture,
        "manifest_cid": manifest_cid,
        "tags": tags or [],
        "size_bytes": size_bytes,
        "description": description,
    }
    result = _call(data_dir, "registry_announce_model", params)
    _emit(result, json_output, [f"announced {name} (seq {result['seq']}) as {result['peer_id']}"])


def nodes(
    gpu: Annotated[bool, typer.Option("--gpu", help="Only nodes with a GPU.")] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="Only nodes holding this model (name or CID).")
    ] = None,
    limit: LimitOption = 1000,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Nodes in the registry view and what they offer."""
    result = _call(data_dir, "registry_nodes", {"gpu": gpu, "model": model, "limit": limit})
    header = f"{'PEER ID':<54} {'CPUS':>4} {'MEMORY':>10} {'GPUS':<24} {'JOBS':<22} MODELS"
    _table(result, "nodes", header, _node_row, json_output)


def offers(
    job_kind: Annotated[str | None, typer.Option("--kind", help="Job kind.")] = None,
    model_cid: Annotated[str | None, typer.Option("--model-cid", help="Model CID.")] = None,
    limit: LimitOption = 1000,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Job offers in the registry view."""
    params = {"job_kind": job_kind, "model_cid": model_cid, "limit": limit}
    result = _call(data_dir, "registry_offers", params)
    header = f"{'OFFER':<24} {'KIND':<14} {'PRICE (FTNS)':>14} {'EXPIRES':>8}  MODEL CID"
    _table(result, "offers", header, _offer_row, json_output)
