"""ADMM for the {0,1} constraint of the hard mask: Z-step, U-step and the rho schedule.

Pure functions on tensors and mask dicts; no module state. With m the relaxed hard mask, Z the
binary auxiliary (exactly k_g ones per group) and U the scaled dual:

    Z = top-k_g(m + U)       (Euclidean projection onto {z in {0,1}^C : sum z = k_g})
    U = U + m - Z
    rho = min(gamma * rho, rho_max)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from admp.masks import MaskDict

Ratio = float | Mapping[str, float]  # one pruning ratio p for every group, or one per group (a latency plan)


def group_ratio(ratio: Ratio, group: str) -> float:
    """The pruning ratio of ``group``: its own in a per-group plan, else the one ratio."""
    return float(ratio[group]) if isinstance(ratio, Mapping) else float(ratio)


def keep_count(channels: int, prune_ratio: float) -> int:
    """k_g = ceil((1 - p) * C_g), at least 1 so that no layer disappears."""
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    # round() first guards against float noise such as (1-0.7)*10 = 3.0000000000000004.
    return max(1, math.ceil(round((1.0 - prune_ratio) * channels, 9)))


def project_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Binary vector with ones at the k largest scores (ties: lowest index first), shape (C,)."""
    if not 1 <= k <= scores.numel():
        raise ValueError(f"k={k} out of range for {scores.numel()} channels")
    # stable sort so that ties resolve deterministically on every platform
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    z = torch.zeros_like(scores, dtype=torch.float32)
    z[order[:k]] = 1.0
    return z


def z_step(m: MaskDict, u: MaskDict, prune_ratio: Ratio) -> MaskDict:
    """Z_g = top-k_g(m_g + U_g) for every group (k_g from the group's ratio)."""
    return {g: project_topk(m[g] + u[g], keep_count(m[g].numel(), group_ratio(prune_ratio, g))) for g in m}


def ramped_ratio(prune_ratio: Ratio, z_step_index: int, ramp: int) -> Ratio:
    """Pruned share targeted by the ``z_step_index``-th Z-step (1-based) under a linear ramp.

    ``ramp`` Z-steps take the target from p/ramp to p (then it stays at p); ``ramp`` <= 1 prunes
    the full share at the first Z-step. Pruning gradually keeps the divergence jump of each step
    small (Zhu & Gupta, 2017, for magnitude pruning; our addition to ADMP).
    """
    if ramp <= 1:
        return prune_ratio
    share = min(1.0, z_step_index / ramp)
    if isinstance(prune_ratio, Mapping):
        return {g: r * share for g, r in prune_ratio.items()}
    return prune_ratio * share


def u_step(u: MaskDict, m: MaskDict, z: MaskDict) -> MaskDict:
    """Scaled dual ascent: U_g <- U_g + m_g - Z_g."""
    return {g: u[g] + m[g].detach() - z[g] for g in u}


def rho_next(rho: float, gamma: float, rho_max: float) -> float:
    """Increasing penalty schedule: rho <- min(gamma * rho, rho_max)."""
    return min(gamma * rho, rho_max)


def rescale_dual(u: MaskDict, rho_old: float, rho_new: float) -> MaskDict:
    """Keep the unscaled dual y = rho*U fixed when rho changes: U <- U * rho_old / rho_new.

    (Boyd et al., Distributed Optimization and Statistical Learning via ADMM, sec. 3.4.1.)
    """
    if rho_old <= 0 or rho_new <= 0 or rho_old == rho_new:
        return u
    return {g: v * (rho_old / rho_new) for g, v in u.items()}


def admm_penalty(m: MaskDict, z: MaskDict, u: MaskDict, rho: float) -> torch.Tensor:
    """(rho / 2) * sum_g ||m_g - Z_g + U_g||^2, differentiable in m."""
    terms = [((m[g] - z[g] + u[g]) ** 2).sum() for g in m]
    if not terms:  # no gated groups: no penalty
        return torch.zeros(())
    return 0.5 * rho * sum(terms[1:], terms[0])


def primal_residual(m: MaskDict, z: MaskDict) -> float:
    """||m - Z|| over all groups: how far the relaxed mask still is from binary feasibility."""
    return math.sqrt(sum(float(((m[g].detach() - z[g]) ** 2).sum()) for g in m))
