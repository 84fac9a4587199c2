"""Export of the final pruned model, shared by centralized and federated runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from admp.metrics import cpu_latency_ms, model_report
from admp.models import GroupSpec, example_input
from admp_export.formats import export_onnx, export_torchscript, onnx_max_abs_diff
from admp_export.integer import export_integer, model_tensor_bytes, tensor_bytes
from admp_export.latency import onnx_latency
from server.report import RunDirectory


def export_and_measure(
    run: RunDirectory,
    teacher: nn.Module,
    student: nn.Module,
    groups: GroupSpec,
    check_inputs: torch.Tensor,
    bits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write TorchScript + ONNX of the student, check ONNX in ONNX Runtime, measure both models.

    With ``bits`` (the student's weights already on those levels, ``server.quantize_phase``)
    ``pruned_model.onnx`` is the integer artefact (``admp_export.integer``) and the float graph is kept
    as ``pruned_model_float.onnx``. Returns teacher/student reports (params, MACs, channels per group,
    CPU latency at batch 1 on one thread), the largest ONNX-vs-PyTorch output difference on
    ``check_inputs``, and ``storage``: the tensor bytes of the exported model against the dense float32
    teacher's, and its ONNX Runtime latency at batch 1 and 64.
    """
    student.eval()
    example = example_input(student)
    export_torchscript(student, example, run.file("pruned_model.ts"))
    exports = ["pruned_model.ts", "pruned_model.onnx"]
    onnx_path = run.file("pruned_model.onnx")
    storage: dict[str, Any] = {"weights": "float32"}
    if bits:
        stored = export_integer(student, bits, run.file("pruned_model_float.onnx"), onnx_path)
        storage = {"weights": stored["weights"], "float_bytes": tensor_bytes(run.file("pruned_model_float.onnx"))}
        exports.append("pruned_model_float.onnx")
    else:
        export_onnx(student, example, onnx_path)
    storage |= _storage(onnx_path, teacher, tuple(example.shape[1:]))
    return {
        "teacher": model_report(teacher, groups, example)
        | {"latency_ms": cpu_latency_ms(teacher, example)["median_ms"]},
        "student": model_report(student, groups, example)
        | {"latency_ms": cpu_latency_ms(student, example)["median_ms"]},
        "onnx_max_abs_diff": onnx_max_abs_diff(onnx_path, student, check_inputs),
        "storage": storage,
        "exports": exports,
    }


def _storage(model: Path, teacher: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The exported model's tensor bytes and file bytes, the dense float32 teacher's tensor bytes, their
    ratio, and the model's ONNX Runtime latency (ms, one thread) at batch 1 and 64."""
    dense_bytes, model_bytes = model_tensor_bytes(teacher), tensor_bytes(model)
    return {
        "model_bytes": model_bytes,
        "file_bytes": model.stat().st_size,
        "dense_float_bytes": dense_bytes,
        "byte_reduction": dense_bytes / model_bytes,
        "onnx_latency_ms": onnx_latency(model, input_shape),
    }
