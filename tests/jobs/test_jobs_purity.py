"""The node starts without torch, nothing unpickles, and the job modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.style_limits import oversized

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "prsm_node" / "jobs"
NODE_SIDE = ("prsm_node", "prsm_node.daemon", "prsm_node.cli", "prsm_node.jobs.runner",
             "prsm_node.jobs.manifests", "prsm_node.jobs.outputs", "prsm_node.jobs.process")


def _files() -> list[Path]:
    files = sorted(JOBS.glob("*.py"))
    assert len(files) >= 10
    return files


def test_the_node_side_imports_neither_torch_nor_safetensors() -> None:
    code = (f"import sys\nfor name in {NODE_SIDE!r}: __import__(name)\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'safetensors', 'numpy'))\nprint(loaded)\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT, timeout=60).stdout
    assert output.strip() == "[]"


def test_no_job_module_unpickles() -> None:
    offenders = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "")]
                offenders += [f"{path.name}: import {n}" for n in names
                              if n and n.split(".")[0] in ("pickle", "dill", "cloudpickle")]
            if isinstance(node, ast.Attribute) and node.attr == "load" and \
                    getattr(node.value, "id", "") == "torch":
                offenders.append(f"{path.name}:{node.lineno}: torch.load")
    assert offenders == []


def test_job_modules_and_functions_stay_small() -> None:
    assert oversized(_files()) == []
