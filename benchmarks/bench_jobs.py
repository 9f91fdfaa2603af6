"""Jobs benchmark: worker start-up, language-model tokens/s and distillation steps/s.

Run: ``.venv/bin/python benchmarks/bench_jobs.py [--runs 3] [--out result.json]``.
Every worker figure comes from a real worker process started by a ``JobRunner`` (the path
the node takes), beside the same work run directly in this process in the same run, with
the same torch settings (one thread, `models.configure_torch`). Asserts nothing.

- start-up: a one-row MLP inference job, from ``submit`` to the result, split at the
  worker's events: spawn + interpreter + our imports (``started``), torch import and set-up
  (``loading``), weights checked and loaded (``running``), the job itself and its output
  written (``done``), and the rest (worker exit, outputs read, work dir removed).
- tokens/s: the demo GPT (byte-level, block 32, 2 layers, width 32) generating
  ``--tokens`` greedy tokens for 16 prompts in one batch; in the worker measured from the
  ``running`` event to ``done`` (the generation alone) and from submit to the result.
- distillation steps/s: the demo MLP (hidden 64) teaching an MLP of hidden 8, batch 64,
  ``--steps`` steps, from the ``running`` event to ``done``, and directly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from bench_common import report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch

from prsm_node.config import JobsSection
from prsm_node.jobs.demo import TRAIN_SAMPLES, demo_task, train_demo
from prsm_node.jobs.distill import distill
from prsm_node.jobs.inference import generate
from prsm_node.jobs.manifests import ModelFiles, fetch_model, publish_model
from prsm_node.jobs.models import configure_torch
from prsm_node.jobs.process import JobRequest
from prsm_node.jobs.runner import JobRunner
from prsm_node.jobs.spec import check_params
from prsm_node.jobs.tensors import to_safetensors
from storage.cid import Cid

PROMPTS = [f"The network {index}" for index in range(16)]
STUDENT = {"architecture": "mlp", "config": {"hidden": [8]}}


def publish(architecture: str) -> tuple[Any, ModelFiles]:
    """(trained demo model, the model as the node fetches it)."""
    demo = train_demo(architecture)
    blocks: dict[Cid, bytes] = {}
    published = publish_model(lambda block: blocks.__setitem__(block.cid, block.data),
                              name=architecture, architecture=architecture,
                              config=demo.config,
                              weights=to_safetensors(demo.model.state_dict()), owner=bytes(32))
    return demo, fetch_model(published.cid, blocks.__getitem__)


async def timed_job(runner: JobRunner, request: JobRequest) -> dict[str, float]:
    """Seconds from submit to each worker event and to the result."""
    marks: dict[str, float] = {}
    began = trio.current_time()
    def stamp(event: dict[str, Any]) -> None:
        marks.setdefault(event.get("phase", event["event"]), trio.current_time() - began)

    job_id = runner.submit(request, on_event=stamp)
    await runner.wait(job_id)
    marks["result"] = trio.current_time() - began
    return marks


def _direct(run: Callable[[], object]) -> float:
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def direct_runs(tokens: int, steps: int, demos: dict[str, Any]
                ) -> dict[str, Callable[[], object]]:
    """The worker's jobs as plain calls in this process, with the worker's torch settings."""
    configure_torch(threads=1, seed=0)
    inputs, labels = demo_task("mlp", seed=0, samples=TRAIN_SAMPLES)
    generate_params = check_params("inference", {"model": ("gpt", demos["gpt"].config)},
                                   {"prompts.json"}, {"max_new_tokens": tokens,
                                                      "batch_size": 16})
    distill_params = check_params("distill", {"teacher": ("mlp", demos["mlp"].config)},
                                  {"dataset.safetensors"}, {"student": STUDENT, "steps": steps})
    prompts = [prompt.encode() for prompt in PROMPTS]
    dataset = {"input": inputs, "labels": labels}
    cpu = torch.device("cpu")
    return {
        "generate": lambda: generate(demos["gpt"].model, prompts, generate_params, seed=0,
                                     device=cpu),
        "distill": lambda: distill(demos["mlp"].model, "mlp", demos["mlp"].config,
                                   distill_params, dataset=dataset, seed=1, device=cpu),
    }


def worker_requests(tokens: int, steps: int, models: dict[str, ModelFiles]
                    ) -> dict[str, JobRequest]:
    inputs, labels = demo_task("mlp", seed=0, samples=TRAIN_SAMPLES)
    return {
        "startup": JobRequest(kind="inference", models={"model": models["mlp"]}, params={},
                              inputs={"input.safetensors": to_safetensors(
                                  {"input": inputs[:1]})}),
        "generate": JobRequest(kind="inference", models={"model": models["gpt"]},
                               inputs={"prompts.json": json.dumps(PROMPTS).encode()},
                               params={"max_new_tokens": tokens, "batch_size": 16}),
        "distill": JobRequest(kind="distill", models={"teacher": models["mlp"]},
                              inputs={"dataset.safetensors": to_safetensors(
                                  {"input": inputs, "labels": labels})},
                              params={"student": STUDENT, "steps": steps}, seed=1),
    }


async def measure(runs: int, direct: dict[str, Callable[[], object]],
                  requests: dict[str, JobRequest]
                  ) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[float]]]:
    """Each run does every job directly and then in a worker, one after the other, so the
    two sides see the same load on this shared machine (blocking calls in the event loop
    are fine here: nothing else runs in it)."""
    runner = JobRunner(JobsSection(max_concurrent=1, device="cpu", threads=1),
                       work_root=Path(tempfile.gettempdir()))
    worker: dict[str, list[dict[str, float]]] = {name: [] for name in requests}
    direct_seconds: dict[str, list[float]] = {name: [] for name in direct}
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        for _ in range(runs):
            for name, request in requests.items():
                if name in direct:
                    direct_seconds[name].append(_direct(direct[name]))
                worker[name].append(await timed_job(runner, request))
        nursery.cancel_scope.cancel()
    return worker, direct_seconds


def summarise(worker: dict[str, list[dict[str, float]]], direct: dict[str, list[float]],
              tokens: int, steps: int, pick: Callable[[list[float]], float]
              ) -> dict[str, Any]:
    """The figures, each over the runs by ``pick`` (min: the least disturbed run, as
    timeit reports; or the median)."""

    def seconds(name: str, key: str, since: str | None = None) -> float:
        return pick([run[key] - (run[since] if since else 0.0) for run in worker[name]])

    generated = tokens * len(PROMPTS)
    startup = {
        "spawn_to_started_s": seconds("startup", "started"),
        "torch_import_and_setup_s": seconds("startup", "loading", "started"),
        "model_check_and_load_s": seconds("startup", "running", "loading"),
        "job_s": seconds("startup", "done", "running"),
        "exit_and_cleanup_s": seconds("startup", "result", "done"),
        "submit_to_result_s": seconds("startup", "result"),
    }
    return {
        "startup": {key: round(value, 3) for key, value in startup.items()},
        "gpt_tokens_per_s": {
            "direct": round(generated / pick(direct["generate"]), 1),
            "worker_generation_only": round(generated / seconds("generate", "done",
                                                                "running"), 1),
            "worker_end_to_end": round(generated / seconds("generate", "result"), 1),
        },
        "distill_steps_per_s": {
            "direct": round(steps / pick(direct["distill"]), 1),
            "worker_training_only": round(steps / seconds("distill", "done", "running"), 1),
            "worker_end_to_end": round(steps / seconds("distill", "result"), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    load_before = os.getloadavg()[0]  # the machine is shared: say how busy it was
    demos, models = {}, {}
    for architecture in ("mlp", "gpt"):
        demos[architecture], models[architecture] = publish(architecture)
    worker, direct = trio.run(measure, options.runs,
                              direct_runs(options.tokens, options.steps, demos),
                              worker_requests(options.tokens, options.steps, models))
    figures: dict[str, Any] = {
        "best": summarise(worker, direct, options.tokens, options.steps, min),
        "median": summarise(worker, direct, options.tokens, options.steps, statistics.median),
        "runs": options.runs, "prompts": len(PROMPTS), "tokens_per_prompt": options.tokens,
        "distill_steps": options.steps, "threads": 1, "torch": torch.__version__,
    }
    figures["load_average_1min_before_after"] = [round(load_before, 2),
                                                 round(os.getloadavg()[0], 2)]
    report(figures, options.out)


if __name__ == "__main__":
    main()
