"""Aggregation maths of federated ADMP: pure functions on tensors, testable without Flower or Ray."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from admp.masks import MaskDict

TensorDict = dict[str, torch.Tensor]


class ReplyError(ValueError):
    """A client reply that must not be aggregated; the message says why."""


def weighted_average(items: Sequence[tuple[TensorDict, int]]) -> TensorDict:
    """Example-weighted mean sum_k n_k x_k / sum_k n_k per key (FedAvg).

    Integer tensors (BatchNorm's ``num_batches_tracked``) take the maximum instead of a mean.
    """
    if not items:
        raise ValueError("nothing to average")
    total = sum(n for _, n in items)
    if total <= 0:
        raise ValueError("total example count must be positive")
    out: TensorDict = {}
    for key, first in items[0][0].items():
        if first.is_floating_point():
            acc = torch.zeros_like(first, dtype=torch.float64)
            for arrays, n in items:
                acc += arrays[key].double() * (n / total)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = torch.stack([arrays[key] for arrays, _ in items]).max(dim=0).values
    return out


def check_arrays(arrays: TensorDict, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Raise ReplyError unless ``arrays`` has exactly the expected keys and shapes, all finite."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ReplyError(f"{what}: missing keys {missing[:3]} unexpected keys {extra[:3]}")
    for key, shape in expected.items():
        got = tuple(arrays[key].shape)
        if got != tuple(shape):
            raise ReplyError(f"{what}.{key}: shape {got}, expected {tuple(shape)}")
        tensor = arrays[key]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ReplyError(f"{what}.{key}: non-finite values")


def check_range(masks: MaskDict, low: float, high: float, what: str, tol: float = 1e-6) -> None:
    """Raise ReplyError if any mask value lies outside [low, high]."""
    for group, tensor in masks.items():
        lo, hi = float(tensor.min()), float(tensor.max())
        if lo < low - tol or hi > high + tol:
            raise ReplyError(f"{what}.{group}: values in [{lo:.4g}, {hi:.4g}], allowed [{low}, {high}]")


def check_percent(value: float, what: str) -> float:
    """An accuracy in percent, or ReplyError (NaN, infinite or outside [0, 100])."""
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ReplyError(f"{what}: {value} is not a percentage")
    return value


def check_examples(n: float, minimum: int = 1) -> int:
    """The reply's example count as an int >= ``minimum``, or ReplyError."""
    if not math.isfinite(n) or n < minimum or n != int(n):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ReplyError(f"num-examples: {n} is not {kind}")
    return int(n)


def bn_statistics(items: Sequence[tuple[TensorDict, TensorDict, int]]) -> tuple[TensorDict, TensorDict]:
    """Pool per-client BatchNorm input moments into global (mean, variance) per layer.

    Each item is (E_k[x], E_k[x^2], n_k) per channel; mean = sum n_k E_k[x] / N and
    var = sum n_k E_k[x^2] / N - mean^2 (the population variance of the union of the data).
    """
    firsts = weighted_average([(mean, n) for mean, _, n in items])
    seconds = weighted_average([(sq, n) for _, sq, n in items])
    variances = {k: (seconds[k] - firsts[k] ** 2).clamp_min(0.0) for k in firsts}
    return firsts, variances
