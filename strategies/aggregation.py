"""Aggregation maths of federated ADMP: pure functions on tensors, testable without Flower or Ray."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


MAX_ABS = 1e6  # no weight, mask, moment or statistic of our models comes near this (inputs are normalised);
#   a finite 3e38 would turn any average into noise
MAX_INT_STEP = 10**7  # how far an integer buffer (BatchNorm's num_batches_tracked) may move in one round


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a reply must be: its shape and exact dtype."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32


def specs_of(state: TensorDict) -> dict[str, ArraySpec]:
    """The expected shape and dtype of every entry of a state dict (the global model's own)."""
    return {k: ArraySpec(tuple(v.shape), v.dtype) for k, v in state.items()}


def check_arrays(
    arrays: TensorDict, expected: Mapping[str, ArraySpec | tuple[int, ...]], what: str, max_abs: float = MAX_ABS
) -> None:
    """Raise ReplyError unless ``arrays`` has exactly the expected keys, shapes and dtypes (a bare
    shape means float32), with finite floats no larger than ``max_abs`` in magnitude."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ReplyError(f"{what}: missing keys {missing[:3]} unexpected keys {extra[:3]}")
    for key, want in expected.items():
        spec = want if isinstance(want, ArraySpec) else ArraySpec(tuple(want))
        tensor = arrays[key]
        if tensor.dtype != spec.dtype:
            raise ReplyError(f"{what}.{key}: dtype {tensor.dtype}, expected {spec.dtype}")
        if tuple(tensor.shape) != spec.shape:
            raise ReplyError(f"{what}.{key}: shape {tuple(tensor.shape)}, expected {spec.shape}")
        if tensor.is_floating_point() and tensor.numel():
            if not bool(torch.isfinite(tensor).all()):
                raise ReplyError(f"{what}.{key}: non-finite values")
            if float(tensor.abs().max()) > max_abs:
                raise ReplyError(f"{what}.{key}: magnitude {float(tensor.abs().max()):.3g} above {max_abs:g}")


def float_norm(arrays: TensorDict) -> float:
    """The Euclidean norm of all floating-point entries of a state dict taken as one vector."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in arrays.values() if v.is_floating_point()))


def check_update(arrays: TensorDict, reference: TensorDict, max_ratio: float, what: str) -> None:
    """Raise ReplyError when a reply moved too far from the global state it was sent: the float
    update's norm above ``max_ratio`` x max(|reference|, 1) (a scaled or replaced model), or an
    integer buffer that went backwards or jumped more than ``MAX_INT_STEP``. ``max_ratio`` 0: no
    bound on the float update."""
    if max_ratio > 0:
        delta = float_norm({k: arrays[k] - reference[k] for k in reference if reference[k].is_floating_point()})
        bound = max_ratio * max(float_norm(reference), 1.0)
        if delta > bound:
            raise ReplyError(f"{what}: update norm {delta:.4g} above {max_ratio:g} x the global norm ({bound:.4g})")
    for key, ref in reference.items():
        if not ref.is_floating_point():
            step = arrays[key].long() - ref.long()
            if step.numel() and (int(step.min()) < 0 or int(step.max()) > MAX_INT_STEP):
                raise ReplyError(f"{what}.{key}: moved by {int(step.max())} (allowed 0 to {MAX_INT_STEP})")


def check_range(masks: MaskDict, low: float, high: float, what: str, tol: float = 1e-6) -> None:
    """Raise ReplyError if any mask value lies outside [low, high]."""
    for group, tensor in masks.items():
        lo, hi = float(tensor.min()), float(tensor.max())
        if lo < low - tol or hi > high + tol:
            raise ReplyError(f"{what}.{group}: values in [{lo:.4g}, {hi:.4g}], allowed [{low}, {high}]")


def check_between(value: float, low: float, high: float, what: str, kind: str) -> float:
    """``value`` if it is finite and in [low, high], else ReplyError saying it is not ``kind``."""
    if not math.isfinite(value) or not low <= value <= high:
        raise ReplyError(f"{what}: {value} is not {kind}")
    return value


def check_percent(value: float, what: str) -> float:
    """An accuracy in percent, or ReplyError (NaN, infinite or outside [0, 100])."""
    return check_between(value, 0.0, 100.0, what, "a percentage")


def check_examples(n: float, minimum: int = 1, maximum: int | None = None, what: str = "num-examples") -> int:
    """The reply's example count as an int in [``minimum``, ``maximum``], or ReplyError (``maximum``:
    what that device can hold; None: no bound known)."""
    if not math.isfinite(n) or n < minimum or n != int(n):
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ReplyError(f"{what}: {n} is not {kind}")
    if maximum is not None and n > maximum:
        raise ReplyError(f"{what}: {int(n)} is more than this device holds ({maximum})")
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


def check_divergence(value: float) -> float:
    """A reply's ``metrics.divergence``: a finite, non-negative number of sane size (a KL term), or ReplyError."""
    return check_between(value, 0.0, 1e6, "metrics.divergence", "a finite divergence")
