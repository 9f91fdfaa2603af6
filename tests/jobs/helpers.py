"""Shared helpers for the job tests: tiny trained models, published once per session."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prsm_node.jobs.demo import DemoModel, train_demo
from prsm_node.jobs.manifests import ModelFiles, PublishedModel, fetch_model, publish_model
from prsm_node.jobs.models import configure_torch
from prsm_node.jobs.tensors import to_safetensors
from storage.cid import Cid
from storage.unixfs import Block

OWNER = bytes(range(32))
DEMO_STEPS = {"mlp": 300, "cnn": 100, "gpt": 100}
"""Enough for each model to beat chance clearly; the GPT and CNN need not be good."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    demo: DemoModel
    published: PublishedModel
    blocks: dict[Cid, bytes]

    def files(self) -> ModelFiles:
        """The model as the node fetches it: through its blocks, every tensor checked."""
        return fetch_model(self.published.cid, self.blocks.__getitem__)


@contextmanager
def reproducible_torch(threads: int = 1, seed: int = 0) -> Iterator[None]:
    """The worker's torch settings in this process, restored afterwards."""
    before = torch.get_num_threads()
    configure_torch(threads=threads, seed=seed)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def published(architecture: str) -> Published:
    """The demo model of ``architecture``, trained (seed 0) and published in a dict store."""
    with reproducible_torch():
        demo = train_demo(architecture, steps=DEMO_STEPS[architecture])
    blocks: dict[Cid, bytes] = {}

    def put(block: Block) -> None:
        blocks[block.cid] = block.data

    model = publish_model(put, name=f"demo-{architecture}", architecture=architecture,
                          config=demo.config, weights=to_safetensors(demo.model.state_dict()),
                          owner=OWNER, shard_size_max=16 * 1024)
    return Published(demo=demo, published=model, blocks=blocks)


def prompts_file(prompts: list[str]) -> bytes:
    return json.dumps(prompts).encode()
