"""The export formats of a (pruned) model for edge inference: TorchScript and ONNX, and the check
that ONNX Runtime computes what PyTorch computes on the exported file."""

from __future__ import annotations

import threading
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


_EXPORTING = threading.Lock()  # the TorchScript-based exporter holds module-level state during an export


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export to ONNX with a dynamic batch dimension (input ``input``, output ``logits``).

    This uses torch's TorchScript-based exporter (``dynamo=False``), deprecated since torch 2.9 but part
    of the torch this project pins (< 2.14). For our models it writes the same graph as the
    torch.export-based exporter (the same ops and opset; LeNet: Flatten where that one writes Reshape)
    in 0.05 s instead of 1.3 s, and in 1.8 s instead of 8.7 s for the first export of a process (measured
    on a LeNet, 2 cores)."""
    model = model.eval()
    with _EXPORTING, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def onnx_max_abs_diff(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |ONNX Runtime output - PyTorch output| on ``inputs``: the export check."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": inputs.numpy().astype(np.float32)})
    with torch.no_grad():
        torch_out = model.eval()(inputs).numpy()
    return float(np.abs(ort_out - torch_out).max())


def export_pte(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """An ExecuTorch program (``.pte``, PyTorch's runtime for mobile and embedded targets) of the eval-mode
    model at ``example``'s batch size, lowered to the XNNPACK backend; needs the ``edge`` extra
    (``pip install 'fedadmp[edge]'``, executorch 1.5.1: it links against the torch already installed)."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise ImportError("ExecuTorch export needs the edge extra: pip install 'fedadmp[edge]'") from exc
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
        program = torch.export.export(model, (example,))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    return path
