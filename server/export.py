"""Export of the final pruned model, shared by centralized and federated runs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from admp.metrics import cpu_latency_ms, model_report
from admp.models import GroupSpec, example_input
from admp_export.formats import export_onnx, export_torchscript, onnx_max_abs_diff
from server.report import RunDirectory


def export_and_measure(
    run: RunDirectory, teacher: nn.Module, student: nn.Module, groups: GroupSpec, check_inputs: torch.Tensor
) -> dict[str, Any]:
    """Write TorchScript + ONNX of the student, check ONNX in ONNX Runtime, measure both models.

    Returns teacher/student reports (params, MACs, channels per group, CPU latency at batch 1 on
    one thread) and the largest ONNX-vs-PyTorch output difference on ``check_inputs``.
    """
    student.eval()
    example = example_input(student)
    export_torchscript(student, example, run.file("pruned_model.ts"))
    export_onnx(student, example, run.file("pruned_model.onnx"))
    return {
        "teacher": model_report(teacher, groups, example)
        | {"latency_ms": cpu_latency_ms(teacher, example)["median_ms"]},
        "student": model_report(student, groups, example)
        | {"latency_ms": cpu_latency_ms(student, example)["median_ms"]},
        "onnx_max_abs_diff": onnx_max_abs_diff(run.file("pruned_model.onnx"), student, check_inputs),
        "exports": ["pruned_model.ts", "pruned_model.onnx"],
    }
