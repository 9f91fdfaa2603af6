"""The registry's core (messages, view, sync) and its store never import trio or libp2p: the
merge rules and checks run anywhere, and the store is plain synchronous code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "prsm_node" / "registry"
PURE = ("messages.py", "view.py", "sync.py", "store.py")
FORBIDDEN = ("trio", "libp2p")


def test_the_registry_core_never_imports_trio_or_libp2p() -> None:
    offenders = []
    for name in PURE:
        tree = ast.parse((ROOT / name).read_text(), filename=name)
        for node in ast.walk(tree):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            offenders += [f"{name}: {m}" for m in modules if m.split(".")[0] in FORBIDDEN]
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prsm_node"):
                assert (node.module or "").startswith("prsm_node.registry"), (name, node.module)
    assert offenders == []
