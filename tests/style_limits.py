"""STYLE.md rule 10 as a check: modules at most ~30 KB, functions at most 70 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

SIZE_MAX = 30 * 1024
FUNCTION_LINES_MAX = 70


def oversized(paths: Iterable[Path]) -> list[str]:
    """Each module over SIZE_MAX bytes and each function over FUNCTION_LINES_MAX lines."""
    too_big = []
    for path in paths:
        text = path.read_text()
        if len(text.encode()) > SIZE_MAX:
            too_big.append(f"{path.name}: {len(text)} bytes")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES_MAX:
                    too_big.append(f"{path.name}:{node.name}: {lines} lines")
    return too_big
