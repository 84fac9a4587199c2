"""Robust aggregation of the devices' replies (``federation.robust.aggregation``): pure tensor maths.

One device must not be able to take over the global model. Validation (``strategies.aggregation``)
rejects what is out of bounds; what stays inside the bounds can still pull an average, so a run can
choose how the replies are combined:

- ``mean``: FedAvg, the example-weighted mean (no defence beyond validation; the default under DP and
  SecAgg+, whose noise and sum are calibrated to it);
- ``clip``: every reply's update (reply - global) clipped to a norm bound, then the weighted mean;
  the bound is ``clip_norm``, or the round's median update norm where ``clip_norm`` is 0, so a few
  large updates cannot outweigh the rest (after Sun et al. 2019, "Can you really backdoor FL?");
- ``median``: the coordinate-wise median (Yin et al. 2018), Flower's ``aggregate_median``;
- ``trimmed_mean``: per coordinate, the mean after cutting ``trim`` of the values at each end
  (Yin et al. 2018), Flower's ``aggregate_trimmed_avg``; the default otherwise (``studies/aggregation.yaml``).

The median and the trimmed mean ignore example counts (a claimed count cannot buy influence).
Integer buffers (BatchNorm's ``num_batches_tracked``) take the maximum in every mode.

The fleet's statistics (mean prediction, class feature sums, pooled BatchNorm moments, gate Fisher
information, the label-free score's figures, the evaluation figures) follow the same mode through
``combine_statistics``:
a statistic has no global value to clip against, so ``clip`` clips each device's per-example
statistics towards their coordinate-wise median, to the median distance (centred clipping,
Karimireddy et al. 2021), before the weighted mean.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg

from strategies.aggregation import bn_statistics, float_norm, weighted_average

TensorDict = dict[str, torch.Tensor]
MODES = ("mean", "clip", "median", "trimmed_mean")


@dataclass(frozen=True)
class Defence:
    """How replies are bounded and combined (``federation.robust.aggregation`` and its companions)."""

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


def combine_statistics(items: Sequence[tuple[TensorDict, int]], defence: Defence) -> TensorDict:
    """Per-example statistics of the devices, (statistics, examples) each, combined by the fleet's mode:
    ``mean`` is the example-weighted mean (exactly ``weighted_average``); ``clip`` the weighted mean of
    each device's statistics moved towards the coordinate-wise median to at most the median distance;
    ``median`` / ``trimmed_mean`` per coordinate, ignoring counts. Every entry is float."""
    mode = defence.aggregation
    if mode == "mean" or len(items) == 1:
        return weighted_average(items)
    if mode not in MODES:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {', '.join(MODES)}")
    keys = list(items[0][0])
    rows = np.stack([np.concatenate([stats[k].double().reshape(-1).numpy() for k in keys]) for stats, _ in items])
    if mode == "clip":
        centre = np.median(rows, axis=0)
        distances = np.linalg.norm(rows - centre, axis=1)
        bound = float(np.median(distances))
        scale = np.minimum(1.0, bound / np.maximum(distances, 1e-12))
        weights = np.array([n for _, n in items], dtype=np.float64)
        combined = ((centre + (rows - centre) * scale[:, None]) * weights[:, None]).sum(axis=0) / weights.sum()
    elif mode == "median":
        combined = np.median(rows, axis=0)
    else:
        combined = np.asarray(aggregate_trimmed_avg([([row], 1) for row in rows], defence.trim)[0])
    out, start = {}, 0
    for k in keys:
        like = items[0][0][k]
        out[k] = torch.from_numpy(combined[start : start + like.numel()].copy()).reshape(like.shape).to(like.dtype)
        start += like.numel()
    return out


def combine_figure(pairs: Sequence[tuple[float, int]], defence: Defence) -> float:
    """One evaluation figure (accuracy, %) from the devices' (figure, test examples) by the fleet's mode,
    over the devices that tested something: the example-weighted mean under ``mean`` (the accuracy over
    every test sample), else ``combine_statistics`` of the per-device figures, so that one device's
    claim moves the fleet's figure no more than its update moves the model."""
    tested = [({"v": torch.tensor([float(value)], dtype=torch.float64)}, n) for value, n in pairs if n > 0]
    return float(combine_statistics(tested, defence)["v"][0]) if tested else 0.0


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


def pooled_moments(
    items: Sequence[tuple[TensorDict, TensorDict, int]], defence: Defence
) -> tuple[TensorDict, TensorDict]:
    """BatchNorm (mean, variance) per layer from the devices' (E[x], E[x^2], n), by the fleet's mode:
    the pooled moments of the union of their data under ``mean`` (``bn_statistics``); otherwise both
    moments of every layer combined at once by ``combine_statistics`` (one device's reply is one row)."""
    if defence.aggregation == "mean":
        return bn_statistics(items)
    rows = [({f"m.{k}": v for k, v in mean.items()} | {f"s.{k}": v for k, v in sq.items()}, n) for mean, sq, n in items]
    combined = combine_statistics(rows, defence)
    means = {k: combined[f"m.{k}"] for k in items[0][0]}
    return means, {k: (combined[f"s.{k}"] - means[k] ** 2).clamp_min(0.0) for k in means}
