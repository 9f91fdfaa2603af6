"""consensus/ is a pure core: it never imports trio, libp2p or prsm_node (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("trio", "libp2p", "prsm_node", "socket", "time", "random", "asyncio")
"""The replica and the ledger also read no clock and no random source; only the store
(sqlite3) touches the disk."""


def test_consensus_never_imports_io_clock_or_randomness() -> None:
    offenders = []
    files = sorted((ROOT / "consensus").rglob("*.py"))
    assert len(files) >= 12
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            offenders += [f"{path.name}: {name}" for name in names
                          if str(name).split(".")[0] in FORBIDDEN]
            if path.name != "store.py":
                offenders += [f"{path.name}: {name}" for name in names
                              if str(name).split(".")[0] == "sqlite3"]
    assert offenders == []


def test_consensus_modules_respect_size_and_function_length() -> None:
    for path in sorted((ROOT / "consensus").rglob("*.py")):
        text = path.read_text()
        assert len(text.encode()) <= 31_000, f"{path.name} is over ~30 KB"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 70, f"{path.name}:{node.name} has {length} lines"
