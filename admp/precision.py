"""Mixed precision under a size budget: per-layer bit-widths chosen by fleet statistics.

Which statistics: the sensitivity of ZeroQ (Cai et al., CVPR 2020, arXiv 2001.00281), the mean KL
divergence between the model's predictions and those of the same model with one layer's weights projected
onto b bits (``admp.quantize.project``), measured here on each device's unlabeled data instead of
ZeroQ's distilled inputs and averaged over the fleet by its sample counts. It needs no label and no
teacher, one forward pass per (layer, width) on data the devices already hold, and it is a figure of the
output the devices will see, which a weight-space proxy (the rounding error alone) is not. A
differentiable relaxation (arXiv 2007.02017) would need its own training rounds; this costs one query.

The choice: the bits of each layer from the widths the artefact stores (8, 4, 2), starting at the widest
and lowering, one layer at a time, the layer whose next lower width adds the least sensitivity per byte
saved, until the artefact's tensor bytes meet the budget (ZeroQ's Pareto frontier, walked greedily).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from admp.quantize import project, stored_bits

STORED_WIDTHS = (8, 4, 2)  # what the integer artefact stores (admp_export.integer): int8, int4, int2


def widths_from(lowest: int) -> list[int]:
    """The stored widths a budget may choose from, widest first: those at or above ``lowest`` bits."""
    return [b for b in STORED_WIDTHS if b >= lowest]


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module, x: torch.Tensor, names: list[str], widths: list[int]
) -> dict[str, torch.Tensor]:
    """Sum over the samples of KL(p || p_{l,b}) for every layer ``l`` in ``names`` and width ``b`` (one
    (len(widths),) tensor per layer): p the model's softmax, p_{l,b} the same with only layer l projected
    at b bits. The model is left as it was."""
    model.eval()
    params = dict(model.named_parameters())
    log_p = torch.log_softmax(model(x), dim=1)
    sums: dict[str, torch.Tensor] = {}
    for name in names:
        original = params[name].detach().clone()
        values = []
        for bits in widths:
            params[name].copy_(project(original, bits))
            log_q = torch.log_softmax(model(x), dim=1)
            values.append(float((log_p.exp() * (log_p - log_q)).sum()))
        params[name].copy_(original)
        sums[name] = torch.tensor(values)
    return sums


def code_bytes(numel: int, channels: int, bits: int) -> int:
    """Bytes the artefact stores for one weight at ``bits``: the packed codes (2, 4 or 8 bits each, the
    last byte padded) and one float32 scale per output channel."""
    return math.ceil(numel * stored_bits(bits) / 8) + 4 * channels


def allocate(
    sensitivity: dict[str, list[float]], sizes: dict[str, tuple[int, int]], widths: list[int], budget: int, fixed: int
) -> dict[str, int]:
    """Per-layer bits whose artefact (``fixed`` bytes of other tensors plus each layer's ``code_bytes``)
    fits ``budget``: from the widest width, lower the layer whose next width adds the least sensitivity
    per byte saved (ties: the larger saving, then the name) until it fits. ``sizes``: (numel, channels)
    per layer; ``sensitivity[l][i]`` belongs to ``widths[i]``. ValueError when even the narrowest misses."""
    level = dict.fromkeys(sensitivity, 0)

    def total() -> int:
        return fixed + sum(code_bytes(*sizes[n], widths[i]) for n, i in level.items())

    while total() > budget:
        moves = []
        for name, i in level.items():
            if i + 1 < len(widths):
                saved = code_bytes(*sizes[name], widths[i]) - code_bytes(*sizes[name], widths[i + 1])
                added = max(sensitivity[name][i + 1] - sensitivity[name][i], 0.0)
                moves.append((added / max(saved, 1), -saved, name))
        if not moves:
            raise ValueError(f"no bit-widths reach {budget} bytes: at {widths[-1]} bits the model holds {total()}")
        _, _, name = min(moves)
        level[name] += 1
    return {name: widths[i] for name, i in level.items()}
