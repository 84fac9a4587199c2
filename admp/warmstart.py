"""Where the hard mask starts (``admp.keep_init``): the cloud's L1-norm choice, a given keep set, or ones.

Started from all ones (``none``), the first Z-step after the warm-up removes the whole share p at
once on evidence from a few rounds, and the student has to recover from that jump inside the mask
phase. Started from a keep set (``l1``: the data-free choice the naive baseline makes on the
cloud; ``file``: another run's, for the mask-transplant ablation), m = Z = that set and the ADMM
penalty acts from the first round, so the student begins as the pruned model and a channel leaves
or enters the keep set only where the devices' loss moves m against the penalty: every change of
the cloud's choice is earned on target data. Plain PyTorch, no Flower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from admp.admm import Ratio, group_ratio, keep_count, project_topk, z_step
from admp.masks import MaskDict, zeros_masks
from admp.models import GroupSpec
from admp.surgery import l1_filter_scores
from admp_data.sources import DataError


def cloud_keep(model: nn.Module, groups: GroupSpec, prune_ratio: Ratio, example: torch.Tensor) -> MaskDict:
    """The binary keep set (one (C_g,) tensor per group) of L1-norm channel pruning at ratio p:
    the top-k_g filters by L1 norm in every group, decided from the weights alone."""
    scores = l1_filter_scores(model, groups, example)
    return z_step(scores, zeros_masks({g: v.numel() for g, v in scores.items()}), prune_ratio)


def read_keep(path: str | Path, sizes: dict[str, int], prune_ratio: Ratio) -> MaskDict:
    """The keep set stored in a run's ``pruned_model.pt`` bundle, checked against this model's groups
    and ratio: the same groups and widths, binary values, k_g = ceil((1 - p) * C_g) ones in each.
    Anything else is one ``DataError`` naming the file and the group."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: keep set (a run's pruned_model.pt) not found")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, or a pickle weights_only refuses
        raise DataError(f"{path}: not a FedADMP model bundle ({type(exc).__name__}: {exc})") from exc
    keep = bundle.get("keep") if isinstance(bundle, dict) else None
    if not isinstance(keep, dict) or not keep:
        raise DataError(f"{path}: the bundle holds no keep set (a dense model)")
    if set(keep) != set(sizes):
        raise DataError(f"{path}: keep set groups {sorted(keep)} differ from the model's {sorted(sizes)}")
    for group, channels in sizes.items():
        mask = keep[group]
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (channels,):
            raise DataError(f"{path}: keep.{group} is not a ({channels},) tensor")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError(f"{path}: keep.{group} is not binary")
        kept, wanted = int(mask.sum()), keep_count(channels, group_ratio(prune_ratio, group))
        if kept != wanted:
            raise DataError(f"{path}: keep.{group} keeps {kept} of {channels} channels; prune_ratio keeps {wanted}")
    return {g: keep[g].to(torch.float32).clone() for g in sizes}


def keep_overlap(a: MaskDict, b: MaskDict) -> float:
    """Share of ``a``'s kept channels that ``b`` keeps too (1: the same keep set), over every group."""
    kept = sum(int(a[g].sum()) for g in a)
    shared = sum(int((a[g] * b[g]).sum()) for g in a)
    return shared / max(kept, 1)


def layerwise_keeps(
    model: nn.Module, groups: GroupSpec, prune_ratio: float, example: torch.Tensor, count: int, gen: torch.Generator
) -> list[MaskDict]:
    """``count`` candidate keep sets by filter L1 norm with different layer-wise ratios and the same total
    of kept channels (FedTiny's candidate pool, at channel level): the first is uniform (ratio p in every
    group, naive's choice); each other draws per-group keep shares (1 - p) * exp(N(0, 0.5^2)) and
    rescales them to the uniform total, each group keeping 1..C_g channels by L1 norm."""
    scores = l1_filter_scores(model, groups, example)
    sizes = {g: v.numel() for g, v in scores.items()}
    uniform = {g: keep_count(c, prune_ratio) for g, c in sizes.items()}
    total = sum(uniform.values())
    counts = [uniform]
    for _ in range(count - 1):
        shares = {g: (1 - prune_ratio) * float(torch.exp(0.5 * torch.randn((), generator=gen))) for g in sizes}
        counts.append(_rescaled(shares, sizes, total))
    return [{g: project_topk(scores[g], k[g]) for g in sizes} for k in counts]


def _rescaled(shares: dict[str, float], sizes: dict[str, int], total: int) -> dict[str, int]:
    """Per-group keep counts proportional to ``shares`` x C_g, each in [1, C_g], summing to ``total``."""
    weight = {g: shares[g] * sizes[g] for g in sizes}
    scale = total / sum(weight.values())
    counts = {g: min(sizes[g], max(1, round(weight[g] * scale))) for g in sizes}
    order = sorted(sizes, key=lambda g: -weight[g])  # the largest shares absorb the rounding
    while sum(counts.values()) != total:
        step = 1 if sum(counts.values()) < total else -1
        movable = [g for g in order if 1 <= counts[g] + step <= sizes[g]]
        counts[movable[0]] += step
    return counts
