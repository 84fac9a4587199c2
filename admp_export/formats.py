"""The export formats of a (pruned) model for edge inference: TorchScript and ONNX, and the check
that ONNX Runtime computes what PyTorch computes on the exported file."""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Trace the eval-mode model to TorchScript (loadable with ``torch.jit.load``, no Python)."""
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what edge runtimes load
        traced = torch.jit.trace(model, example)
    traced.save(str(path))
    return path


_REGISTRIES: dict[Any, Any] = {}  # torchlib's registry of ONNX functions, per build arguments (the opset)
_EXPORTING = threading.Lock()  # one export at a time holds the registry in place


@contextlib.contextmanager
def _registry_built_once() -> Iterator[None]:
    """Within the block, ``torch.onnx.export`` reuses torchlib's registry of ONNX functions instead of
    rebuilding it: the build is about 1 s of a 2.5 s LeNet export on two cores and gives the same
    registry every time. The exporter only reads it (a custom translation table would add to it; our
    exports pass none). With another torch layout the export runs as it is."""
    try:
        from torch.onnx._internal.exporter import _registration

        owner = _registration.ONNXRegistry
        original = owner.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def reuse(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = build(cls, *args, **kwargs)
        return _REGISTRIES[key]

    with _EXPORTING:
        owner.from_torchlib = classmethod(reuse)  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            owner.from_torchlib = original  # type: ignore[method-assign]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export to ONNX (torch.export-based exporter) with a dynamic batch dimension."""
    model = model.eval()
    arg = next(iter(inspect.signature(model.forward).parameters))
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about torchvision ops we never use
    try:
        with warnings.catch_warnings(), _registry_built_once():
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes={arg: {0: torch.export.Dim("batch")}},
                dynamo=True,
                verbose=False,
                external_data=False,
            )
    finally:
        exporter_log.setLevel(level)
    return path


def onnx_max_abs_diff(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |ONNX Runtime output - PyTorch output| on ``inputs``: the export check."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": inputs.numpy().astype(np.float32)})
    with torch.no_grad():
        torch_out = model.eval()(inputs).numpy()
    return float(np.abs(ort_out - torch_out).max())
