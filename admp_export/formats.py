"""The export formats of a (pruned) model for edge inference: TorchScript and ONNX, and the check
that ONNX Runtime computes what PyTorch computes on the exported file."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

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


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export to ONNX (torch.export-based exporter) with a dynamic batch dimension."""
    model = model.eval()
    arg = next(iter(inspect.signature(model.forward).parameters))
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about torchvision ops we never use
    try:
        with warnings.catch_warnings():
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
