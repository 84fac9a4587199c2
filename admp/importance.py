"""Channel importance from the fleet's own data: the Fisher information of the channel gates.

L1-norm pruning ranks channels by their weights alone, the same on every domain. Here a channel's
importance is measured on the unlabeled target data: with gate m_c multiplying channel c,

    F_c = E_x E_{y ~ p(.|x)} [ (d/dm_c log p(y | x))^2 ]

the Fisher information of the gate, taken with labels drawn from the model's own prediction, so no
label is read (Theis et al. 2018, "Faster gaze prediction with dense networks and Fisher pruning";
Liu et al. 2021, "Group Fisher pruning"). Removing channel c (m_c: 1 -> 0) changes the model's
predictions on that data by KL ~ F_c / 2 to second order, so the keep set of the k_g largest F_c in
each group is the one that changes the target predictions least. Devices return per-channel sums of
squared per-sample gate gradients; the server adds them over the fleet (``pooled_fisher``).

The choice runs in steps (``fisher_ratios``): each step removes the same share of the channels that
remain, and devices re-measure F under the gates of the last step, so that a channel that matters
only once its neighbours are gone is seen. Plain PyTorch, no Flower.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from admp.admm import keep_count, project_topk
from admp.masks import MaskDict, gated, group_sizes
from admp.models import GroupSpec
from admp.trainer import recalibrate_bn


def gate_fisher(
    model: nn.Module,
    groups: GroupSpec,
    x: torch.Tensor,
    gen: torch.Generator,
    keep: MaskDict | None = None,
    batch_size: int = 128,
) -> MaskDict:
    """Per-channel sums over ``x`` of the squared per-sample gate gradient of log p(y|x), y drawn from
    the model's prediction with ``gen``; under the gates ``keep`` (None: every channel open).

    The model runs in eval mode (BN as it is: the caller re-estimates it on ``x`` first). In eval mode
    every sample's loss depends on that sample only, so one backward pass of the summed loss yields
    every per-sample gradient. For a gated output y = m * o, d log p_i / d m_c = sum over positions of
    (d log p_i / d y) o = (d log p_i / d o) o / m_c: the hooks read o and its gradient, and the gate is
    divided back out (``_gate_corrected``)."""
    model.eval()
    modules = dict(model.named_modules())
    sums = {g: torch.zeros(c) for g, c in group_sizes(model, groups).items()}
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        per_sample = _batch_gate_grads(model, groups, modules, batch, gen, keep)
        for g, grads in per_sample.items():
            sums[g] += (grads**2).sum(0)
    return sums


def _batch_gate_grads(
    model: nn.Module,
    groups: GroupSpec,
    modules: dict[str, nn.Module],
    batch: torch.Tensor,
    gen: torch.Generator,
    keep: MaskDict | None,
) -> dict[str, torch.Tensor]:
    """(N, C_g) per-sample gate gradients of one batch, summed over each group's layers."""
    outputs: dict[str, torch.Tensor] = {}

    def capture(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: tuple[Any, ...], out: torch.Tensor) -> None:
            out.retain_grad()  # the gradient w.r.t. this layer's (ungated) output
            outputs[name] = out

        return hook

    layers = {layer for members in groups.values() for layer in members}
    handles = [modules[layer].register_forward_hook(capture(layer)) for layer in layers]
    try:
        with torch.enable_grad(), gated(model, groups, keep) if keep is not None else nullcontext():
            logits = model(batch)
            probs = torch.softmax(logits.detach(), dim=1)
            drawn = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            log_p = torch.log_softmax(logits, dim=1).gather(1, drawn[:, None]).sum()
            model.zero_grad(set_to_none=True)
            log_p.backward()
    finally:
        for handle in handles:
            handle.remove()
    grads: dict[str, torch.Tensor] = {}
    for g, members in groups.items():
        total: torch.Tensor = torch.zeros(())
        for layer in members:
            out = outputs[layer]
            if out.grad is None:  # the layer does not reach the output (nothing flows back)
                continue
            contrib = out.grad * out.detach()  # (d/do) * o, o the layer's output before the gate
            total = total + (contrib.flatten(2).sum(2) if contrib.dim() > 2 else contrib)
        if keep is not None:
            total = _gate_corrected(total, keep[g])
        grads[g] = total.detach()
    return grads


def _gate_corrected(grads: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients w.r.t. a binary gate from those w.r.t. the ungated output: d/dm = (d/do) o / m is
    (d/do) o for an open gate; a closed gate's channel reads 0 (not a candidate within this step)."""
    return grads * (gate > 0)


def pooled_fisher(items: Sequence[tuple[MaskDict, int]]) -> MaskDict:
    """The fleet's mean Fisher per channel: sum_k S_k / sum_k n_k over the devices' (sums, n)."""
    total = max(sum(n for _, n in items), 1)
    groups = items[0][0].keys()
    return {g: sum((sums[g] for sums, _ in items), torch.zeros_like(items[0][0][g])) / total for g in groups}


def fisher_ratios(prune_ratio: float, steps: int) -> list[float]:
    """The pruned share after each of ``steps`` steps: every step removes the same share of what remains,
    1 - (1 - p)^(j / steps), the last exactly p."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return [1 - (1 - prune_ratio) ** (j / steps) for j in range(1, steps)] + [prune_ratio]


def fisher_keep(fisher: MaskDict, keep: MaskDict | None, prune_ratio: float) -> MaskDict:
    """The keep set at ratio p: in every group the k_g = ceil((1 - p) C_g) channels of largest Fisher among
    those ``keep`` still holds (None: all); ties go to the lower index (``project_topk``)."""
    chosen: MaskDict = {}
    for g, scores in fisher.items():
        ranked = scores.clone()
        if keep is not None:
            ranked[keep[g] <= 0] = -math.inf
        chosen[g] = project_topk(ranked, keep_count(scores.numel(), prune_ratio))
    return chosen


def measured_fisher(
    model: nn.Module, groups: GroupSpec, x: torch.Tensor, gen: torch.Generator, keep: MaskDict | None = None
) -> MaskDict:
    """``gate_fisher`` sums of a copy of ``model`` whose BN statistics are first re-estimated on ``x`` under
    the gates ``keep`` (AdaBN: the Fisher of the model as it would run on this data)."""
    probe = copy.deepcopy(model)
    recalibrate_bn(probe, x, masks=(groups, keep) if keep is not None else None)
    return gate_fisher(probe, groups, x, gen, keep)


def stepped_keep(measure: Callable[[MaskDict | None], MaskDict], prune_ratio: float, steps: int) -> MaskDict:
    """The keep set at ``prune_ratio`` in ``steps`` steps (``fisher_ratios``): each step ranks the channels
    still kept by ``measure(keep)``, the mean Fisher under the last step's gates (None: none closed)."""
    keep: MaskDict | None = None
    for ratio in fisher_ratios(prune_ratio, steps):
        keep = fisher_keep(measure(keep), keep, ratio)
    assert keep is not None  # fisher_ratios gives at least one step
    return keep
