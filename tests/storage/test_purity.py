"""storage/ is a pure package: it never imports trio, libp2p or prsm_node (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.style_limits import oversized

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("trio", "libp2p", "prsm_node")


def _files() -> list[Path]:
    files = sorted((ROOT / "storage").rglob("*.py"))
    assert len(files) >= 8
    return files


def test_storage_never_imports_trio_libp2p_or_prsm_node() -> None:
    offenders = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[object] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            offenders += [f"{path.name}: {name}" for name in names
                          if str(name).split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_storage_modules_and_functions_stay_small() -> None:
    assert oversized(_files()) == []
