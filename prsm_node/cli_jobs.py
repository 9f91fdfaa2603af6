"""`prsm-node model|worker|job ...`: the job market from the command line.

Rules (as cli.py): no trio or libp2p imports; `--json` prints exactly one JSON object;
an error the node reports is one line on stderr and a non-zero exit code. Paths are made
absolute here, since the node resolves them in its own working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from prsm_node.cli_ledger import DataDirOption, JsonOption, WaitOption, _call, _emit

model_app = typer.Typer(help="Publish and inspect models on the job market.",
                        no_args_is_help=True)
worker_app = typer.Typer(help="Serve models as a worker.", no_args_is_help=True)
job_app = typer.Typer(help="Submit jobs and collect their results.", no_args_is_help=True)

TRAINING_WAIT_S = 600.0


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise typer.BadParameter(f"not JSON: {error}", param_hint=option) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return value


@model_app.command("publish")
def model_publish(
    weights: Annotated[Path | None, typer.Argument(help="A safetensors weights file.")] = None,
    architecture: Annotated[str | None, typer.Option(help="mlp, cnn or gpt.")] = None,
    config: Annotated[str | None, typer.Option(help="Architecture config, JSON.")] = None,
    demo: Annotated[str | None, typer.Option(help="Train and publish a demo model.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name.")] = None,
    royalty_bps: Annotated[int, typer.Option(help="Owner's share of each job's price.")] = 0,
    price: Annotated[str, typer.Option(help="FTNS per job.")] = "1",
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Store a model, provide it and register it on the ledger."""
    params: dict[str, Any] = {"royalty_bps": royalty_bps, "price": price, "wait_s": wait_s}
    if weights is not None:
        params["path"] = str(weights.resolve())
    for key, value in (("architecture", architecture), ("demo", demo), ("name", name),
                       ("config", _json_object(config, "--config"))):
        if value is not None:
            params[key] = value
    result = _call(data_dir, "model_publish", params, timeout_s=wait_s + TRAINING_WAIT_S)
    _emit(result, json_output, [f"published {result['cid']} ({result['architecture']}) at "
                                f"height {result['height']}"])


@model_app.command("list")
def model_list(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """Models registered on the ledger."""
    result = _call(data_dir, "model_list")
    lines = [f"{m['cid']}  price {m['price']}  royalty {m['royalty_bps']} bps  "
             f"workers {m['workers']}" + (f"  teacher {m['teacher']}" if m["teacher"] else "")
             for m in result["models"]]
    _emit(result, json_output, lines or ["no models registered"])


@model_app.command("show")
def model_show(
    cid: Annotated[str, typer.Argument(help="Model manifest CID.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """A model's ledger record, and its manifest when this node holds it."""
    result = _call(data_dir, "model_show", {"cid": cid})
    _emit(result, json_output, [f"{key:<18} {value}" for key, value in result.items()])


@worker_app.command("register")
def worker_register(
    models: Annotated[list[str], typer.Argument(help="Model CIDs to serve.")],
    stake: Annotated[str | None, typer.Option(help="FTNS to add to the worker stake.")] = None,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Fetch and pin the models, then register this node as their worker."""
    params: dict[str, Any] = {"models": models, "wait_s": wait_s}
    if stake is not None:
        params["stake"] = stake
    result = _call(data_dir, "worker_register", params, timeout_s=wait_s + TRAINING_WAIT_S)
    _emit(result, json_output, [f"worker {result['worker']} serves {len(result['models'])} "
                                f"model(s), stake {result['stake']} FTNS"])


@job_app.command("submit")
def job_submit(
    model: Annotated[str, typer.Option("--model", help="Model CID.")],
    kind: Annotated[str, typer.Option("--kind", help="inference or distill.")],
    input_file: Annotated[Path, typer.Option("--input", help="Input file (safetensors or "
                                             "prompts JSON).")],
    params: Annotated[str | None, typer.Option(help="Job params, JSON object.")] = None,
    max_price: Annotated[str | None, typer.Option(help="FTNS at most.")] = None,
    deadline_s: Annotated[float, typer.Option("--deadline", help="Seconds from now.")] = 3600.0,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Submit a job; prints its id."""
    call: dict[str, Any] = {"model": model, "kind": kind, "input": str(input_file.resolve()),
                            "deadline_s": deadline_s, "wait_s": wait_s}
    if params is not None:
        call["params"] = _json_object(params, "--params")
    if max_price is not None:
        call["max_price"] = max_price
    result = _call(data_dir, "job_submit", call, timeout_s=wait_s + 30)
    _emit(result, json_output, [result["job_id"]])


@job_app.command("status")
def job_status(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """A job's status; with progress (step, loss) while this node runs it, or, on the
    submitter's node, as the assigned worker reports it."""
    result = _call(data_dir, "job_status", {"job_id": job_id})
    lines = [f"status    {result['status']}", f"kind      {result['kind']}",
             f"model     {result['model']}", f"assignee  {result['assignee']}"]
    if result["output"]:
        lines.append(f"output    {result['output']}")
    progress = (result.get("local") or {}).get("progress") or {}
    if progress:
        lines.append("progress  " + "  ".join(f"{k}={v}" for k, v in sorted(progress.items())))
    worker = result.get("worker") or {}
    if "error" in worker and "state" not in worker:
        lines.append(f"worker    no progress: {worker['error']}")
    elif worker:
        shown = {"state": worker["state"], **worker["progress"]}
        lines.append("worker    " + "  ".join(f"{k}={v}" for k, v in shown.items()))
        if worker["error"]:
            lines.append(f"error     {worker['error']}")
    _emit(result, json_output, lines)


@job_app.command("result")
def job_result(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Fetch a job's output (a distill job's student weights) into a file."""
    result = _call(data_dir, "job_result", {"job_id": job_id, "output": str(output.resolve())},
                   timeout_s=120)
    _emit(result, json_output, [f"wrote {result['size']} bytes to {result['path']} "
                                f"(sha256 matches: {result['sha256_matches']})"])


@job_app.command("list")
def job_list(
    role: Annotated[str, typer.Option(help="all, submitted or assigned.")] = "all",
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Jobs this node submitted or was assigned."""
    result = _call(data_dir, "job_list", {"role": role})
    lines = [f"{j['job_id']}  {j['status']:<9}  {j['kind']:<9}  {j['model']}"
             for j in result["jobs"]]
    _emit(result, json_output, lines or ["no jobs"])


@job_app.command("accept")
def job_accept(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Accept a result: the escrow is paid out now."""
    result = _call(data_dir, "job_accept", {"job_id": job_id, "wait_s": wait_s},
                   timeout_s=wait_s + 10)
    _emit(result, json_output, [f"job {job_id} {result['status']}"])


@job_app.command("dispute")
def job_dispute(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Dispute a result within the challenge window; two verifiers re-execute it."""
    result = _call(data_dir, "job_dispute", {"job_id": job_id, "wait_s": wait_s},
                   timeout_s=wait_s + 10)
    _emit(result, json_output, [f"job {job_id} {result['status']}, bond {result['bond']} FTNS"])
