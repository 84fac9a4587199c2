"""Robust aggregation of the devices' replies (``federation.aggregation``): pure tensor maths.

One device must not be able to take over the global model. Validation (``strategies.aggregation``)
rejects what is out of bounds; what stays inside the bounds can still pull an average, so a run can
choose how the replies are combined:

- ``mean``: FedAvg, the example-weighted mean (the default; no defence beyond validation);
- ``clip``: every reply's update (reply - global) clipped to a norm bound, then the weighted mean;
  the bound is ``clip_norm``, or the round's median update norm where ``clip_norm`` is 0, so a few
  large updates cannot outweigh the rest (after Sun et al. 2019, "Can you really backdoor FL?");
- ``median``: the coordinate-wise median (Yin et al. 2018), Flower's ``aggregate_median``;
- ``trimmed_mean``: per coordinate, the mean after cutting ``trim`` of the values at each end
  (Yin et al. 2018), Flower's ``aggregate_trimmed_avg``.

The median and the trimmed mean ignore example counts (a claimed count cannot buy influence).
Integer buffers (BatchNorm's ``num_batches_tracked``) take the maximum in every mode.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg

from strategies.aggregation import float_norm, weighted_average

TensorDict = dict[str, torch.Tensor]
MODES = ("mean", "clip", "median", "trimmed_mean")


@dataclass(frozen=True)
class Defence:
    """How replies are bounded and combined (``federation.aggregation`` and its companions)."""

    aggregation: str = "mean"  # one of MODES
    trim: float = 0.2  # trimmed_mean: share cut at each end, per coordinate
    clip_norm: float = 0.0  # clip: update norm bound; 0: the round's median update norm
    max_update_ratio: float = 10.0  # reject an update longer than this x the global model's norm; 0: off


def aggregate(
    items: Sequence[tuple[TensorDict, int]], defence: Defence, reference: TensorDict | None = None
) -> TensorDict:
    """Combine (state dict, examples) replies by ``defence.aggregation``; ``reference`` is the global
    state the devices started from (needed by ``clip``; without it ``clip`` is the plain mean)."""
    mode = defence.aggregation
    if mode == "mean" or len(items) == 1:
        return weighted_average(items)
    if mode == "clip":
        return clipped_mean(items, reference, defence.clip_norm) if reference is not None else weighted_average(items)
    if mode not in MODES:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {', '.join(MODES)}")
    return _coordinatewise(items, mode, defence.trim)


def clipped_mean(items: Sequence[tuple[TensorDict, int]], reference: TensorDict, clip_norm: float) -> TensorDict:
    """reference + weighted mean of the updates, each scaled to norm <= C (C = ``clip_norm``, or the
    median of the round's update norms when ``clip_norm`` is 0)."""
    floats = [k for k, v in reference.items() if v.is_floating_point()]
    deltas = [({k: arrays[k].double() - reference[k].double() for k in floats}, n) for arrays, n in items]
    norms = [float_norm(d) for d, _ in deltas]
    bound = clip_norm if clip_norm > 0 else statistics.median(norms)
    clipped = [
        ({k: v * min(1.0, bound / max(norm, 1e-12)) for k, v in d.items()}, n)
        for (d, n), norm in zip(deltas, norms, strict=True)
    ]
    update = weighted_average(clipped)
    out = {key: (reference[key].double() + update[key]).to(reference[key].dtype) for key in floats}
    return out | _integer_maxima(items)


def _coordinatewise(items: Sequence[tuple[TensorDict, int]], mode: str, trim: float) -> TensorDict:
    """Coordinate-wise median or trimmed mean of the float entries (Flower's NumPy aggregators);
    integer entries take the maximum."""
    first = items[0][0]
    floats = [k for k, v in first.items() if v.is_floating_point()]
    results = [([arrays[k].double().numpy() for k in floats], 1) for arrays, _ in items]
    layers = aggregate_median(results) if mode == "median" else aggregate_trimmed_avg(results, trim)
    out = {k: torch.from_numpy(np.asarray(layer)).to(first[k].dtype) for k, layer in zip(floats, layers, strict=True)}
    return out | _integer_maxima(items)


def _integer_maxima(items: Sequence[tuple[TensorDict, int]]) -> TensorDict:
    """The element-wise maximum of every integer entry (BatchNorm's ``num_batches_tracked``), as FedAvg
    (``weighted_average``) takes it."""
    first = items[0][0]
    ints = [k for k, v in first.items() if not v.is_floating_point()]
    return {k: torch.stack([arrays[k] for arrays, _ in items]).max(dim=0).values for k in ints}
