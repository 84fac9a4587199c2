"""Channel gates: the relaxed hard mask m and the adversarial soft mask s of ADMP.

Masks live *outside* the model as named 1-D tensors (one per channel group), so that they can be
averaged, sent and validated as separate arrays, and so that the model itself stays a plain
PyTorch module that Torch-Pruning can trace and cut. ``ChannelGates`` attaches forward hooks that
multiply each gated BatchNorm output by ``m[g] * s[g]`` (broadcast over the channel dimension).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from admp.models import GroupSpec

MaskDict = dict[str, torch.Tensor]  # group name -> (C_g,) tensor
GateHook = Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]  # a forward hook scaling the output


def group_sizes(model: nn.Module, groups: GroupSpec) -> dict[str, int]:
    """Number of channels C_g per group; raises if the layers of a group disagree."""
    modules = dict(model.named_modules())
    sizes: dict[str, int] = {}
    for name, layers in groups.items():
        counts = {modules[layer].num_features for layer in layers}
        if len(counts) != 1:
            raise ValueError(f"group {name!r}: layers {layers} have different widths {counts}")
        sizes[name] = counts.pop()
    return sizes


def ones_masks(sizes: dict[str, int]) -> MaskDict:
    """Masks initialised to 1 (no attenuation), as both m and s start in ADMP."""
    return {name: torch.ones(c) for name, c in sizes.items()}


def zeros_masks(sizes: dict[str, int]) -> MaskDict:
    """Masks initialised to 0, as the ADMM dual U starts."""
    return {name: torch.zeros(c) for name, c in sizes.items()}


def clone_masks(masks: MaskDict) -> MaskDict:
    """Detached copies, so that later in-place updates do not alias."""
    return {name: t.detach().clone() for name, t in masks.items()}


def pruned_fraction(keep: MaskDict) -> float:
    """Share of all channels that a binary keep mask removes."""
    return 1.0 - sum(int(k.sum()) for k in keep.values()) / max(sum(k.numel() for k in keep.values()), 1)


def mask_sparsity(masks: MaskDict, threshold: float = 0.5) -> float:
    """Fraction of all channels whose mask value is below ``threshold``."""
    total = sum(t.numel() for t in masks.values())
    below = sum(int((t < threshold).sum()) for t in masks.values())
    return below / max(total, 1)


class ChannelGates:
    """Forward hooks scaling each gated BatchNorm output by m[g]*s[g].

    ``hard`` and ``soft`` are read at every forward, so in-place updates (optimizer steps, the
    adversary) take effect immediately. ``soft=None`` means s = 1.
    """

    def __init__(self, model: nn.Module, groups: GroupSpec, hard: MaskDict, soft: MaskDict | None = None) -> None:
        self.model, self.groups, self.hard, self.soft = model, groups, hard, soft
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def gate(self, group: str) -> torch.Tensor:
        """The effective per-channel multiplier of a group, shape (C_g,)."""
        g = self.hard[group]
        return g * self.soft[group] if self.soft is not None else g

    def attach(self) -> ChannelGates:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        modules = dict(self.model.named_modules())
        for group, layers in self.groups.items():
            for layer in layers:
                self._handles.append(modules[layer].register_forward_hook(self._hook(group)))
        return self

    def detach(self) -> None:
        """Remove the hooks; the model is plain again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, group: str) -> GateHook:
        def scale(_module: nn.Module, _inputs: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            g = self.gate(group)
            return out * g.view(1, -1, *([1] * (out.dim() - 2)))  # (N,C,...) * (1,C,1..)

        return scale


@contextmanager
def gated(model: nn.Module, groups: GroupSpec, hard: MaskDict, soft: MaskDict | None = None) -> Iterator[ChannelGates]:
    """Context manager: the model runs with channel gates inside the block only."""
    gates = ChannelGates(model, groups, hard, soft).attach()
    try:
        yield gates
    finally:
        gates.detach()
