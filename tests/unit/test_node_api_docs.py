from __future__ import annotations

from pathlib import Path

from prsm_node.control import Dispatcher
from prsm_node.dht_api import register_dht_methods
from prsm_node.ledger_api import LedgerMethods
from prsm_node.node_api import register_node_methods
from prsm_node.registry.api import RegistryMethods
from prsm_node.storage_api import register_storage_methods

DOCS = Path(__file__).resolve().parents[2] / "docs" / "control-api.md"


def test_every_registered_control_method_is_documented_with_an_example() -> None:
    dispatcher = Dispatcher()
    register_node_methods(dispatcher, context=None)  # type: ignore[arg-type]
    register_dht_methods(dispatcher, dht=None)  # type: ignore[arg-type]
    register_storage_methods(dispatcher, None, None)  # type: ignore[arg-type]
    LedgerMethods(None).register(dispatcher)  # type: ignore[arg-type]
    RegistryMethods(None).register(dispatcher)  # type: ignore[arg-type]
    docs = DOCS.read_text()
    assert dispatcher.method_names()
    for name in dispatcher.method_names():
        assert f"### `{name}`" in docs, f"{name} is not documented in {DOCS}"
        assert f'"method":"{name}"' in docs, f"{name} has no request example in {DOCS}"

