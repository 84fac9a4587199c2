"""ADMP losses: KD divergence, confident pseudo labels, information maximisation, the adversary.

Shapes: logits are (N, K) for N samples and K classes; masks are (C_g,) per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from admp.masks import MaskDict


def kd_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """D = tau^2 * KL(softmax(T/tau) || softmax(S/tau)), averaged over the batch.

    The teacher-student output difference is ADMP's measure of domain divergence; it is exactly 0
    when the student's logits equal the teacher's.
    """
    log_q = F.log_softmax(teacher_logits.detach() / tau, dim=1)  # (N, K)
    log_p = F.log_softmax(student_logits / tau, dim=1)  # (N, K)
    return tau**2 * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def pseudo_labels(teacher_logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher's argmax labels and the boolean mask of confident ones (max prob >= threshold)."""
    probs = F.softmax(teacher_logits.detach(), dim=1)  # (N, K)
    confidence, labels = probs.max(dim=1)
    return labels, confidence >= threshold


def pseudo_label_ce(teacher_logits: torch.Tensor, student_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Cross-entropy of the student on the teacher's confident pseudo labels (0 if none)."""
    labels, keep = pseudo_labels(teacher_logits, threshold)
    if not bool(keep.any()):
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits[keep], labels[keep])


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of each row of ``probs`` (..., K) -> (...)."""
    return -(probs * torch.log(probs + 1e-8)).sum(dim=-1)


def information_maximisation(
    student_logits: torch.Tensor, fleet_marginal: torch.Tensor | None = None, own_share: float = 1.0
) -> torch.Tensor:
    """Mean per-sample entropy minus the entropy of the mean prediction (SHOT-style IM loss).

    Minimising it makes each prediction confident while keeping the classes diverse. With
    ``fleet_marginal`` (K,) the diversity is that of the fleet's mean prediction, in which this
    batch counts with ``own_share`` (the device's share of the fleet's samples): a label-skewed
    device is not pushed to a uniform class mix of its own, only the fleet is.
    """
    probs = F.softmax(student_logits, dim=1)  # (N, K)
    sample_entropy = entropy(probs).mean()
    mean_probs = probs.mean(dim=0)  # (K,)
    if fleet_marginal is not None:
        share = min(max(own_share, 0.0), 1.0)
        mean_probs = share * mean_probs + (1.0 - share) * fleet_marginal.detach()
    diversity = entropy(mean_probs)
    return sample_entropy - diversity


def project_budget(s: torch.Tensor, s_min: float, eps: float, iters: int = 60) -> torch.Tensor:
    """Euclidean projection of s onto {s in [s_min, 1]^C : mean(1 - s) <= eps}.

    The projection is clip(s + lam, s_min, 1) for the smallest lam >= 0 meeting the budget; lam is
    found by bisection and the feasible end of the bracket is returned, so the budget always holds.
    """
    clipped = s.clamp(s_min, 1.0)
    if float((1.0 - clipped).mean()) <= eps:
        return clipped
    lo, hi = 0.0, 1.0 - float(s.min())  # at hi every entry is 1: mean(1 - s) = 0 <= eps
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if float((1.0 - (s + mid).clamp(s_min, 1.0)).mean()) <= eps:
            hi = mid
        else:
            lo = mid
    return (s + hi).clamp(s_min, 1.0)


@torch.no_grad()
def adversary_step(
    soft: MaskDict, grads: MaskDict, lr: float, s_min: float, eps: float, normalize: bool = True
) -> MaskDict:
    """One ascent step of the soft mask on the divergence, projected onto its budget per group.

    s_g <- Proj(s_g + lr * grad_g), where grad_g = dD/ds_g. With ``normalize`` the gradient is
    divided by its largest magnitude in the group, so ``lr`` is the largest per-step change.
    """
    out: MaskDict = {}
    for g, s in soft.items():
        step = grads[g]
        if normalize:
            step = step / (step.abs().max() + 1e-12)
        out[g] = project_budget(s + lr * step, s_min, eps)
    return out
