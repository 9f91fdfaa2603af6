"""What a node announces about itself (prsm_node/registry/capabilities.py)."""

from __future__ import annotations

from prsm_node.registry.capabilities import (
    Hardware,
    Resources,
    _parse_probe,
    capability_fields,
    price_hints,
)
from prsm_node.registry.messages import Kind, Limits, decode_entry

from .helpers import CID, NOW_MS, make

RESOURCES = Resources(
    cpu_cores=4, memory_bytes=8 * 2**30, storage_free_bytes=2**30, pinned_roots=(CID,)
)


def fields(hardware: Hardware) -> dict:
    return capability_fields(
        hardware=hardware,
        resources=RESOURCES,
        models=[CID, CID],
        job_kinds=("inference", "distillation"),
        hints=("inference=1000",),
        addrs=["/ip4/127.0.0.1/tcp/1"],
        version="0.1.0",
    )


def test_a_node_without_torch_accepts_no_job_kinds() -> None:
    without = fields(Hardware(torch=False, gpus=(), probed=True))
    assert without["job_kinds"] == [] and without["price_hints"] == {}
    with_torch = fields(Hardware(torch=True, gpus=(("H100", 80 * 2**30),), probed=True))
    assert with_torch["job_kinds"] == ["inference", "distillation"]
    assert with_torch["gpus"] == [{"name": "H100", "memory_bytes": 80 * 2**30}]
    assert with_torch["models"] == [CID]
    assert price_hints(("inference=1000", "distillation=5")) == {
        "inference": "1000", "distillation": "5"
    }


def test_announced_fields_fit_the_schema() -> None:
    for hardware in (Hardware(False, (), False), Hardware(True, (("A100", 2**35),), True)):
        entry = make(Kind.CAPABILITY, fields=fields(hardware))
        assert decode_entry(entry.wire, limits=Limits(), now_ms=NOW_MS).body == entry.body


def test_an_unreadable_probe_means_no_gpu() -> None:
    assert _parse_probe(b'{"torch": true, "gpus": [{"name": "X", "memory_bytes": 5}]}') == (
        Hardware(torch=True, gpus=(("X", 5),), probed=True)
    )
    assert _parse_probe(b"not json").gpus == ()
    assert _parse_probe(b'{"torch": true}').probed is False
