"""Masked model -> physically pruned model (the export formats are ``admp_export.formats``).

Steps: fold the (binary) hard mask into the gated BatchNorm affine parameters, so a removed
channel outputs exactly 0; then let Torch-Pruning's dependency graph cut the channel from the
conv, the BatchNorm and every consumer (next conv's inputs, the flattened Linear's columns, the
other members of a residual stream). Because a cut channel contributed exactly 0, the pruned
model's eval-mode outputs equal the masked model's (up to float rounding).
"""

from __future__ import annotations

import copy

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
