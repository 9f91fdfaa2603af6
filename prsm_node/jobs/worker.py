"""The job worker process: ``python -I -m prsm_node.jobs.worker``, run in the job's work dir.

Rules:
0. Started with ``--sandbox DIR...``, the worker isolates itself first (sandbox.py: the
   dirs hidden, /proc and the network gone, no capabilities), before it reads anything of
   the job; if the kernel refuses, the job fails with ``SandboxError``.
1. Before anything heavy (torch), the worker reads ``job.json`` and limits itself:
   RLIMIT_CPU (soft: SIGXCPU, hard two seconds later: SIGKILL), RLIMIT_AS (the memory
   limit plus ``ADDRESS_SPACE_SLACK_BYTES`` of address space that torch reserves without
   touching; not on a CUDA machine, whose driver maps far more), RLIMIT_FSIZE (no file
   larger than the memory limit) and RLIMIT_CORE 0. The parent watches resident memory and
   the wall clock besides (process.py).
2. stdout carries the protocol and nothing else: one JSON object per line, ``event`` being
   ``started``, ``phase``, ``progress``, ``done`` (with ``outputs`` and ``info``) or
   ``error`` (with ``type``, ``message`` and, for an allocation failure, ``limit``:
   ``memory``). File descriptor 1 is moved to a private descriptor at start and 1 then
   points at stderr, so a library that prints cannot break the protocol. stderr goes to
   ``stderr.log`` in the work dir.
3. Every exception ends as one ``error`` line and exit status 3 (the traceback goes to
   stderr.log, not to the node's log): this function is the process boundary, the one
   place where catching any ``Exception`` is the contract.
4. The worker reads only the work dir's fixed layout (spec.py), checks the spec, every
   model (``manifests.check_weights``) and every input before using them, and writes only
   to ``outputs/``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from prsm_node.jobs import sandbox
from prsm_node.jobs.errors import JobSpecError
from prsm_node.jobs.spec import (
    CPU_HARD_GRACE_SECONDS,
    DATASET,
    INPUT_TENSORS,
    INPUTS_DIR,
    MANIFEST_FILE,
    MODEL_ROLES,
    MODELS_DIR,
    OUTPUT,
    OUTPUTS_DIR,
    PROMPTS,
    PROMPTS_MAX,
    SPEC_FILE,
    SPEC_SIZE_MAX,
    STUDENT,
    JobSpec,
    WorkerLimits,
    check_params,
    spec_from_json,
)
from storage.manifest import MANIFEST_SIZE_MAX, decode_manifest

ADDRESS_SPACE_SLACK_BYTES = 1024 * 1024 * 1024
"""Address space torch maps but does not touch: 507 MB of VMS for 221 MB RSS right after
``import torch`` (measured, torch 2.13 CPU), plus 64 MB malloc arenas per thread."""
PROMPTS_SIZE_MAX = 64 * 1024 * 1024
EXIT_REPORTED = 3

Emit = Callable[[dict[str, Any]], None]


def _claim_stdout() -> IO[str]:
    """Move the protocol to a private descriptor; fd 1 becomes stderr (rule 2)."""
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1)


def _emitter(stream: IO[str]) -> Emit:
    def emit(event: dict[str, Any]) -> None:
        stream.write(json.dumps(event, allow_nan=False, separators=(",", ":")) + "\n")
        stream.flush()

    return emit


def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity (a diverged loss): those become null."""
    return value if math.isfinite(value) else None


def _read(path: Path, size_max: int) -> bytes:
    with open(path, "rb") as stream:
        data = stream.read(size_max + 1)
    if len(data) > size_max:
        raise JobSpecError(str(path), f"larger than {size_max} bytes")
    return data


def apply_limits(limits: WorkerLimits, *, address_space: bool) -> None:
    """Rule 1; runs before torch is imported."""
    cpu = limits.cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + CPU_HARD_GRACE_SECONDS))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.memory_bytes, limits.memory_bytes))
    if address_space:
        total = limits.memory_bytes + ADDRESS_SPACE_SLACK_BYTES
        resource.setrlimit(resource.RLIMIT_AS, (total, total))


def _may_use_cuda(device: str) -> bool:
    """Whether torch may map a GPU (the driver reserves terabytes of address space)."""
    return device == "cuda" or (device == "auto" and os.path.exists("/dev/nvidiactl"))


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "can't allocate memory" in str(error)


def _load_model(role: str) -> tuple[Any, str, Mapping[str, Any]]:
    """(module, architecture, config) of ``models/<role>``, every tensor checked."""
    from prsm_node.jobs.tensors import load_model

    folder = Path(MODELS_DIR, role)
    manifest = decode_manifest(_read(folder / MANIFEST_FILE, MANIFEST_SIZE_MAX))
    files = {f.name: _read(folder / f.name, f.size) for f in manifest.files}
    model, description = load_model(manifest, files)
    return model, description.architecture, description.config


def _hardware(device: Any) -> dict[str, Any]:
    """What 'the same kind of hardware' means for a reproducibility check."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.machine()} {platform.processor()}".strip()
    return {"device": device.type, "name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def _resolve_device(wanted: str) -> Any:
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise JobSpecError("device", "cuda was asked for but torch sees no GPU")
    use_cuda = wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def _inference(spec: JobSpec, emit: Emit, device: Any) -> dict[str, Any]:
    from prsm_node.jobs.inference import run_inference
    from prsm_node.jobs.tensors import from_safetensors, to_safetensors

    model, name, config = _load_model("model")
    params = check_params(spec.kind, {"model": (name, config)}, set(spec.inputs), spec.params)
    inputs = prompts = None
    if INPUT_TENSORS in spec.inputs:
        inputs = from_safetensors(_read(Path(INPUTS_DIR, INPUT_TENSORS), spec.limits.memory_bytes))
    else:
        prompts = json.loads(_read(Path(INPUTS_DIR, PROMPTS), PROMPTS_SIZE_MAX))
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= PROMPTS_MAX or \
                not all(isinstance(p, str) for p in prompts):
            raise JobSpecError("inputs.prompts", f"must be a list of 1 to {PROMPTS_MAX} strings")
    emit({"event": "phase", "phase": "running"})
    outputs = run_inference(model.to(device), name, config, inputs=inputs, prompts=prompts,
                            params=params, seed=spec.seed, device=device)
    Path(OUTPUTS_DIR, OUTPUT).write_bytes(to_safetensors(outputs))
    count = len(prompts) if prompts is not None else len(outputs["logits"])
    return {"architecture": name, "count": count, "params": params}


def _distill(spec: JobSpec, emit: Emit, device: Any) -> dict[str, Any]:
    from prsm_node.jobs.distill import distill
    from prsm_node.jobs.tensors import from_safetensors, to_safetensors

    teacher, name, config = _load_model("teacher")
    params = check_params(spec.kind, {"teacher": (name, config)}, set(spec.inputs), spec.params)
    dataset = None
    if DATASET in spec.inputs:
        dataset = from_safetensors(_read(Path(INPUTS_DIR, DATASET), spec.limits.memory_bytes))
    steps = params["steps"]

    def progress(step: int, loss: float) -> None:
        emit({"event": "progress", "step": step, "steps": steps, "loss": _finite(loss)})

    emit({"event": "phase", "phase": "running"})
    result = distill(teacher.to(device), name, config, params, dataset=dataset,
                     seed=spec.seed, device=device, progress=progress)
    Path(OUTPUTS_DIR, STUDENT).write_bytes(to_safetensors(result.student.state_dict()))
    return {"student": params["student"], "final_loss": _finite(result.final_loss),
            "samples": result.samples,
            "lineage": {"method": "distill", "steps": steps,
                        "temperature": params["temperature"],
                        "learning_rate": params["learning_rate"],
                        "hard_label_weight": params["hard_label_weight"],
                        "seed": spec.seed}}


def run(spec: JobSpec, emit: Emit) -> dict[str, Any]:
    """Import torch, make it reproducible, run the job; returns the ``info`` of ``done``."""
    import torch

    from prsm_node.jobs.models import configure_torch

    torch.set_num_interop_threads(1)
    device = _resolve_device(spec.device)
    configure_torch(threads=spec.limits.threads, seed=spec.seed, cuda=device.type == "cuda")
    emit({"event": "phase", "phase": "loading", "device": device.type})
    info = (_inference if spec.kind == "inference" else _distill)(spec, emit, device)
    return {**info, "hardware": _hardware(device)}


def main(argv: list[str]) -> int:
    emit = _emitter(_claim_stdout())
    try:
        sandboxed = bool(argv) and argv[0] == "--sandbox"
        if sandboxed:  # rule 0
            sandbox.enter(argv[1:], os.getcwd())
        spec = spec_from_json(json.loads(_read(Path(SPEC_FILE), SPEC_SIZE_MAX)))
        apply_limits(spec.limits, address_space=not _may_use_cuda(spec.device))
        emit({"event": "started", "pid": os.getpid(), "kind": spec.kind, "sandbox": sandboxed,
              "roles": list(MODEL_ROLES[spec.kind])})
        info = run(spec, emit)
        outputs = sorted(path.name for path in Path(OUTPUTS_DIR).iterdir())
        emit({"event": "done", "outputs": outputs, "info": info})
        return 0
    except Exception as error:  # rule 3: the process boundary
        traceback.print_exc()
        report: dict[str, Any] = {"event": "error", "type": type(error).__name__,
                                  "message": str(error)[:2000]}
        if _is_out_of_memory(error):
            report["limit"] = "memory"
        emit(report)
        return EXIT_REPORTED


if __name__ == "__main__":
    status = main(sys.argv[1:])
    sys.stderr.flush()
    # The outputs are closed and the protocol flushed; skipping the interpreter's
    # finalisation (torch's module teardown) saves ~0.5 s per job (measured in
    # benchmarks/bench_jobs.py: exit_and_cleanup_s).
    os._exit(status)
