"""Publishing weights as a manifest plus shards, fetching them back, and the loader's checks."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

from prsm_node.jobs.demo import publish_demo
from prsm_node.jobs.errors import ModelError, WeightsMismatchError
from prsm_node.jobs.manifests import (
    DEFAULT_TOLERANCE,
    Tolerance,
    check_weights,
    describe_model,
    fetch_model,
    publish_model,
)
from prsm_node.jobs.models import build_model
from prsm_node.jobs.tensorfile import parse_header
from prsm_node.jobs.tensors import load_model, to_safetensors
from storage.blockstore import BlockStore
from storage.cid import Cid
from storage.manifest import Manifest, decode_manifest, encode_manifest
from storage.unixfs import Block
from tests.jobs.helpers import OWNER

CONFIG = {"in_features": 6, "hidden": [32, 16], "num_classes": 3}


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_model("mlp", CONFIG)


def _publish(weights: bytes | None = None, **options: object):
    blocks: dict[Cid, bytes] = {}

    def put(block: Block) -> None:
        blocks[block.cid] = block.data

    published = publish_model(put, name="tiny", architecture="mlp", config=CONFIG,
                              weights=weights or to_safetensors(_model().state_dict()),
                              owner=OWNER, **options)
    return published, blocks


def test_weights_round_trip_through_manifest_and_shards() -> None:
    published, blocks = _publish(shard_size_max=1024)
    # Name order: 128 + 768 + 64 bytes fit in 1024; the 2048-byte weight gets a shard of
    # its own; the last 12 + 192 bytes share one.
    shards = [sorted(parse_header(data).entries) for data in published.files.values()]
    assert shards == [["layers.0.bias", "layers.0.weight", "layers.1.bias"],
                      ["layers.1.weight"], ["layers.2.bias", "layers.2.weight"]]
    fetched = fetch_model(published.cid, blocks.__getitem__)
    assert decode_manifest(encode_manifest(fetched.manifest)) == published.manifest
    assert fetched.files == published.files
    model, description = load_model(fetched.manifest, fetched.files)
    assert description.tolerance == Tolerance(**DEFAULT_TOLERANCE)
    assert description.config["activation"] == "relu"  # defaults are written out
    inputs = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(model(inputs), _model()(inputs))


def test_publishing_is_deterministic_and_one_file_below_the_shard_size() -> None:
    first, _ = _publish()
    again, _ = _publish()
    assert first.cid == again.cid
    assert [f.name for f in first.manifest.files] == ["model.safetensors"]


def test_tolerance_and_lineage_travel_in_the_manifest() -> None:
    teacher, _ = _publish()
    student, _ = _publish(tolerance=Tolerance(atol=1e-3, rtol=0.0),
                          lineage={"method": "distill", "teacher": str(teacher.cid)})
    description = describe_model(student.manifest)
    assert description.tolerance == Tolerance(atol=1e-3, rtol=0.0)
    assert Cid.parse(description.lineage["teacher"]) == teacher.cid
    with pytest.raises(ModelError, match="lineage"):
        _publish(lineage={"teacher": "not a cid"})


def _swap_file(manifest: Manifest, files: dict[str, bytes], weights: bytes
               ) -> tuple[Manifest, dict[str, bytes]]:
    """Replace the one weight file (its manifest size follows, so the tensor check decides)."""
    (only,) = manifest.files
    return (replace(manifest, files=(replace(only, size=len(weights)),)),
            {only.name: weights})


def _altered(change) -> bytes:
    state = dict(_model().state_dict())
    change(state)
    return to_safetensors(state)


@pytest.mark.parametrize(("change", "tensor", "reason"), [
    (lambda s: s.update({"layers.1.weight": torch.zeros(16, 31)}), "layers.1.weight",
     "holds F32 [16, 31], manifest says F32 [16, 32]"),
    (lambda s: s.update({"layers.0.bias": s["layers.0.bias"].double()}), "layers.0.bias",
     "holds F64 [32]"),
    (lambda s: s.update({"layers.0.extra": torch.zeros(1)}), "layers.0.extra", "only"),
    (lambda s: s.pop("layers.2.bias"), "layers.2.bias", "only the manifest"),
])
def test_loader_refuses_weights_that_disagree_with_the_manifest(change, tensor: str,
                                                                reason: str) -> None:
    published, _ = _publish()
    manifest, files = _swap_file(published.manifest, dict(published.files), _altered(change))
    for check in (check_weights, load_model):
        with pytest.raises(WeightsMismatchError, match=re.escape(reason)) as caught:
            check(manifest, files)
        assert caught.value.tensor == tensor


def test_loader_refuses_a_manifest_that_disagrees_with_the_architecture() -> None:
    published, _ = _publish()
    config = dict(published.manifest.config, model=dict(CONFIG, hidden=[32, 15]))
    with pytest.raises(WeightsMismatchError, match="the architecture F32 \\[15, 32\\]"):
        load_model(replace(published.manifest, config=config), published.files)
    with pytest.raises(WeightsMismatchError, match="the architecture F32 \\[15, 32\\]"):
        publish_model(lambda block: None, name="x", architecture="mlp",
                      config=dict(CONFIG, hidden=[32, 15]),
                      weights=to_safetensors(_model().state_dict()), owner=OWNER)


def test_loader_refuses_a_file_of_the_wrong_size_or_name() -> None:
    published, _ = _publish()
    (data,) = published.files.values()
    with pytest.raises(WeightsMismatchError, match="bytes, manifest says"):
        check_weights(published.manifest, {"model.safetensors": data + b" "})
    with pytest.raises(WeightsMismatchError, match="are not the manifest's"):
        check_weights(published.manifest, {"other.safetensors": data})


def test_a_file_header_is_parsed_before_anything_else() -> None:
    published, _ = _publish()
    (data,) = published.files.values()
    assert set(parse_header(data).entries) == {t.name for t in published.manifest.tensors}


def test_a_demo_model_publishes_into_a_block_store(tmp_path) -> None:
    with BlockStore(tmp_path / "blocks", quota_bytes=64 * 1024 * 1024, fsync=False) as store:
        published = publish_demo(store.put, architecture="cnn", owner=OWNER, steps=5)
        fetched = fetch_model(published.cid, store.get)
    assert fetched.manifest.name == "demo-cnn" and fetched.files == published.files
