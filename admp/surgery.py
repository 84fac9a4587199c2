"""Masked model -> physically pruned model, and export for edge inference.

Steps: fold the (binary) hard mask into the gated BatchNorm affine parameters, so a removed
channel outputs exactly 0; then let Torch-Pruning's dependency graph cut the channel from the
conv, the BatchNorm and every consumer (next conv's inputs, the flattened Linear's columns, the
other members of a residual stream). Because a cut channel contributed exactly 0, the pruned
model's eval-mode outputs equal the masked model's (up to float rounding).
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from admp.masks import MaskDict
from admp.models import GroupSpec


@torch.no_grad()
def fold_masks_into_bn(model: nn.Module, groups: GroupSpec, masks: MaskDict) -> None:
    """In place: BN(x)*g == BN'(x) with gamma' = g*gamma, beta' = g*beta, for every gated BN."""
    modules = dict(model.named_modules())
    for group, layers in groups.items():
        g = masks[group].to(torch.float32)
        for layer in layers:
            bn = modules[layer]
            bn.weight.mul_(g)
            bn.bias.mul_(g)


def l1_filter_scores(model: nn.Module, groups: GroupSpec, example: torch.Tensor) -> MaskDict:
    """Per-channel L1 norm of the conv filters (or linear rows) that produce each group's channels
    (summed over a residual group's layers): the classic data-free criterion of L1-norm channel pruning."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    modules = dict(model.named_modules())
    scores: MaskDict = {}
    for group, layers in groups.items():
        bn = modules[layers[0]]
        channels = bn.num_features
        pruning_group = dg.get_pruning_group(bn, tp.prune_batchnorm_out_channels, idxs=list(range(channels)))
        total = torch.zeros(channels)
        for dep, _ in pruning_group:
            layer = dep.target.module
            conv = dep.handler == tp.prune_conv_out_channels and isinstance(layer, (nn.Conv1d, nn.Conv2d))
            linear = dep.handler == tp.prune_linear_out_channels and isinstance(layer, nn.Linear)
            if (conv or linear) and layer.weight.shape[0] == channels:  # a depthwise conv's filters count too
                total += layer.weight.detach().abs().flatten(1).sum(dim=1)
        scores[group] = total
    return scores


def prune_model(model: nn.Module, groups: GroupSpec, keep: MaskDict, example: torch.Tensor) -> nn.Module:
    """A physically pruned copy of ``model`` that keeps only channels where ``keep[g] == 1``.

    ``keep`` is the binary hard mask (m = Z after ADMM). The mask is folded first, so the copy is
    exact for the masked model. Returns a new module; the input is not modified.
    """
    pruned = copy.deepcopy(model).eval()
    fold_masks_into_bn(pruned, groups, keep)
    dg = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
    modules = dict(pruned.named_modules())
    for group, layers in groups.items():
        drop = torch.nonzero(keep[group] < 0.5).flatten().tolist()
        if not drop:
            continue
        if len(drop) >= keep[group].numel():
            raise ValueError(f"group {group!r}: refusing to remove every channel")
        root = modules[layers[0]]
        pruning_group = dg.get_pruning_group(root, tp.prune_batchnorm_out_channels, idxs=drop)
        pruning_group.prune()
    return pruned


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
