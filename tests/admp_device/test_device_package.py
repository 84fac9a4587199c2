"""The device runtime as a distribution of its own (``admp_device/pyproject.toml``): what it installs is
numpy, ONNX Runtime and Pillow only, its command is ``infer``'s, and the runtime imports nothing else
(no torch, nothing of ours), so the wheel runs on a device without the platform."""

import ast
import re
from pathlib import Path

import pytest

from admp_device import infer

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "admp_device"


def test_the_device_distribution_installs_only_the_runtime():
    device = tomllib.loads((DEVICE / "pyproject.toml").read_text())["project"]
    platform = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", dep)[0].lower() for dep in device["dependencies"]}
    assert names == {"numpy", "onnxruntime", "pillow"}
    assert device["version"] == platform["version"]
    module, _, function = device["scripts"]["fedadmp-infer"].partition(":")
    assert module == "admp_device.infer" and callable(getattr(infer, function))


def test_the_runtime_imports_only_the_standard_library_numpy_onnxruntime_and_pillow():
    allowed = {"numpy", "onnxruntime", "PIL", "__future__"}
    for path in DEVICE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            foreign = {r for r in roots if r not in allowed and not _stdlib(r)}
            assert not foreign, f"{path.name} imports {foreign}"


def _stdlib(name: str) -> bool:
    import sys

    return name in sys.stdlib_module_names
