"""Model manifests: one canonical byte form, one CID, strict schema with caps."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.cid import CODEC_RAW, raw_cid
from storage.errors import CorruptBlockError, InvalidManifestError
from storage.manifest import (
    MANIFEST_SIZE_MAX,
    Manifest,
    TensorSpec,
    WeightFile,
    decode_manifest,
    encode_manifest,
    load_manifest,
    manifest_block,
)

OWNER = bytes(range(32))


def make(**changes) -> Manifest:
    files = (WeightFile(name="b.safetensors", cid=raw_cid(b"b"), size=10),
             WeightFile(name="a.safetensors", cid=raw_cid(b"a"), size=20))
    tensors = (TensorSpec(name="lm_head.weight", dtype="BF16", shape=(32000, 4096),
                          file="b.safetensors"),
               TensorSpec(name="embed.weight", dtype="F32", shape=(32000, 4096),
                          file="a.safetensors"))
    fields = dict(name="tiny-llama", architecture="LlamaForCausalLM",
                  config={"hidden_size": 4096, "rms_norm_eps": 1e-5, "rope": {"theta": 1e4},
                          "tie": False, "layers": [1, 2]},
                  tensors=tensors, files=files, owner=OWNER)
    fields.update(changes)
    return Manifest(**fields)


def test_manifest_round_trips_through_its_block() -> None:
    manifest = make()
    block = manifest_block(manifest)
    assert block.cid.codec == CODEC_RAW
    loaded = load_manifest(block.cid, {block.cid: block.data}.__getitem__)
    assert encode_manifest(loaded) == block.data
    assert {t.name for t in loaded.tensors} == {"lm_head.weight", "embed.weight"}
    assert loaded.config["rms_norm_eps"] == 1e-5


def test_order_of_lists_and_keys_does_not_change_the_cid() -> None:
    one = make()
    other = make(tensors=tuple(reversed(one.tensors)), files=tuple(reversed(one.files)),
                 config=dict(reversed(list(one.config.items()))))
    assert manifest_block(one).cid == manifest_block(other).cid


def test_non_canonical_bytes_are_refused() -> None:
    body = msgpack.unpackb(encode_manifest(make()), raw=False)
    shuffled = dict(reversed(list(body.items())))
    with pytest.raises(InvalidManifestError, match="canonical"):
        decode_manifest(msgpack.packb(shuffled, use_bin_type=True))


def test_load_refuses_bytes_that_are_not_the_cid() -> None:
    block = manifest_block(make())
    with pytest.raises(CorruptBlockError):
        load_manifest(block.cid, lambda cid: block.data + b" ")


@pytest.mark.parametrize("changes, match", [
    ({"owner": b"short"}, "owner"),
    ({"config": {"x": float("nan")}}, "finite"),
    ({"config": {"x": object()}}, "type"),
    ({"config": {1: 2}}, "keys"),
    ({"name": ""}, "name"),
    ({"tensors": (TensorSpec(name="t", dtype="F32", shape=(1,), file="missing"),)},
     "not in files"),
])
def test_schema_refuses_bad_fields(changes: dict, match: str) -> None:
    with pytest.raises(InvalidManifestError, match=match):
        make(**changes)


def test_tensor_and_file_specs_check_themselves() -> None:
    with pytest.raises(InvalidManifestError, match="dtype"):
        TensorSpec(name="t", dtype="float32", shape=(1,), file="f")
    with pytest.raises(InvalidManifestError, match="rank"):
        TensorSpec(name="t", dtype="F32", shape=(1,) * 9, file="f")
    with pytest.raises(InvalidManifestError, match="dimension"):
        TensorSpec(name="t", dtype="F32", shape=(-1,), file="f")
    with pytest.raises(InvalidManifestError, match="relative"):
        WeightFile(name="../etc/passwd", cid=raw_cid(b""), size=1)
    with pytest.raises(InvalidManifestError, match="duplicate"):
        make(files=(WeightFile(name="a", cid=raw_cid(b""), size=1),) * 2, tensors=())


def test_deep_config_and_oversized_manifest_are_refused() -> None:
    deep: dict = {}
    for _ in range(12):
        deep = {"x": deep}
    with pytest.raises(InvalidManifestError, match="deep"):
        make(config=deep)
    big = make(config={"blob": "x" * MANIFEST_SIZE_MAX})
    with pytest.raises(InvalidManifestError, match="exceeds"):
        encode_manifest(big)


@given(st.binary(max_size=200))
def test_decoding_garbage_raises_only_the_typed_error(data: bytes) -> None:
    with pytest.raises(InvalidManifestError):
        decode_manifest(data)


def test_decoding_wrong_shapes_raises_the_typed_error() -> None:
    body = msgpack.unpackb(encode_manifest(make()), raw=False)
    for key, value in [("files", "x"), ("tensors", [1]), ("files", [{"cid": b"x", "name": "a",
                                                                       "size": 1}])]:
        broken = dict(body, **{key: value})
        with pytest.raises(InvalidManifestError):
            decode_manifest(msgpack.packb(broken, use_bin_type=True))
