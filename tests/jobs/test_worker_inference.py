"""Inference through the worker process equals the same model run directly in this process."""

from __future__ import annotations

import pytest
import torch

from prsm_node.jobs.inference import run_inference
from prsm_node.jobs.manifests import describe_model
from prsm_node.jobs.outputs import compare_outputs, generated_bytes
from prsm_node.jobs.process import JobRequest
from prsm_node.jobs.runner import JobState
from prsm_node.jobs.spec import check_inference_params
from prsm_node.jobs.tensors import from_safetensors, load_model, to_safetensors
from tests.jobs.helpers import prompts_file, published, reproducible_torch

pytestmark = pytest.mark.multiprocess

PROMPTS = ["The network", "A student learns from", "x"]
SEED = 7


def _request(architecture: str, params: dict, seed: int = SEED) -> JobRequest:
    model = published(architecture)
    if architecture == "gpt":
        inputs = {"prompts.json": prompts_file(PROMPTS)}
    else:
        shape = (16,) if architecture == "mlp" else (1, 8, 8)
        batch = torch.randn(37, *shape, generator=torch.Generator().manual_seed(1))
        inputs = {"input.safetensors": to_safetensors({"input": batch})}
    return JobRequest(kind="inference", models={"model": model.files()}, inputs=inputs,
                      params=params, seed=seed)


def _direct(request: JobRequest) -> bytes:
    """The same job in this process: load through the same checks, run, serialise."""
    files = request.models["model"]
    description = describe_model(files.manifest)
    with reproducible_torch(seed=request.seed):
        model, _ = load_model(files.manifest, files.files)
        inputs = prompts = None
        if "prompts.json" in request.inputs:
            prompts = PROMPTS
        else:
            inputs = from_safetensors(request.inputs["input.safetensors"])
        task = "classifier" if description.architecture != "gpt" else "language_model"
        outputs = run_inference(model, description.architecture, description.config,
                                inputs=inputs, prompts=prompts,
                                params=check_inference_params(task, request.params),
                                seed=request.seed, device=torch.device("cpu"))
    return to_safetensors(outputs)


async def test_worker_inference_equals_direct_run_for_every_architecture(start_runner) -> None:
    runner = await start_runner()
    requests = {"mlp": _request("mlp", {"batch_size": 10}),
                "cnn": _request("cnn", {"batch_size": 16}),
                "gpt": _request("gpt", {"max_new_tokens": 12, "batch_size": 2})}
    job_ids = {architecture: runner.submit(request) for architecture, request in
               requests.items()}
    for architecture, job_id in job_ids.items():
        result = await runner.wait(job_id)
        direct = _direct(requests[architecture])
        # Same CPU, one thread, same seed: the bytes are identical, not merely close.
        assert result.outputs["output.safetensors"] == direct, architecture
        assert runner.status(job_id).state is JobState.COMPLETED
        assert result.info["hardware"]["device"] == "cpu"
    logits = from_safetensors((await runner.wait(job_ids["mlp"])).outputs["output.safetensors"])
    assert logits["logits"].shape == (37, 4)
    texts = generated_bytes((await runner.wait(job_ids["gpt"])).outputs["output.safetensors"])
    assert [len(text) for text in texts] == [12, 12, 12]
    assert runner.statistics().completed == 3


async def test_seeded_sampling_reproduces_and_another_seed_differs(start_runner) -> None:
    runner = await start_runner()
    params = {"max_new_tokens": 24, "temperature": 1.5, "top_k": 40}
    request = _request("gpt", params)
    sampled = (await runner.execute(request)).outputs["output.safetensors"]
    tolerance = describe_model(request.models["model"].manifest).tolerance
    assert sampled == _direct(request)
    assert compare_outputs(sampled, _direct(request), tolerance).equal
    differing = compare_outputs(sampled, _direct(_request("gpt", params, seed=SEED + 1)),
                                tolerance)
    assert not differing.equal and differing.tensor in ("logprobs", "tokens")
