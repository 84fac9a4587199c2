"""The training objective of every method: KD divergence + pseudo labels + information maximisation.

One loss for FedADMP's local step, KD fine-tuning, the baselines and the centralized run, so that
comparisons isolate the pruning; also the prediction statistics a device reports for the fleet's
marginal and the label-free score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from admp.losses import information_maximisation, kd_divergence, pseudo_label_ce
from admp_config.sections import AdmpHyper


def uses_centroids(hp: AdmpHyper) -> bool:
    """Whether the pseudo-label term trains on centroid labels."""
    return hp.lambda_pl > 0 and hp.pseudo_labels == "centroid"


def shares_centroids(hp: AdmpHyper) -> bool:
    """Whether devices label by the fleet's centroids (and so report their feature sums)."""
    return uses_centroids(hp) and hp.centroids == "fleet"


@dataclass(frozen=True)
class FleetPrior:
    """The fleet's mean prediction (K,) from the last round, and this device's share of its samples."""

    marginal: torch.Tensor
    own_share: float


def pseudo_label_loss(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, hp: AdmpHyper, labels: torch.Tensor | None
) -> torch.Tensor:
    """The pseudo-label cross-entropy of one batch: on the centroid labels (``labels``, (B,)) or,
    with ``pseudo_labels: teacher``, on the teacher's confident argmax."""
    if hp.pseudo_labels == "teacher":
        return pseudo_label_ce(teacher_logits, student_logits, hp.pl_threshold)
    if labels is None:
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits, labels)


def adaptation_loss(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    hp: AdmpHyper,
    prior: FleetPrior | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total KD-adaptation loss, divergence D) on one batch; IM uses the fleet's marginal if given,
    the pseudo-label term the batch's centroid ``labels`` (B,) if given."""
    div = kd_divergence(teacher_logits, student_logits, hp.tau)
    loss = hp.lambda_kd * div
    if hp.lambda_pl > 0:
        loss = loss + hp.lambda_pl * pseudo_label_loss(teacher_logits, student_logits, hp, labels)
    if hp.lambda_im > 0:
        marginal, share = (prior.marginal, prior.own_share) if prior is not None else (None, 1.0)
        loss = loss + hp.lambda_im * information_maximisation(student_logits, marginal, share)
    return loss, div


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's softmax (N, K) over ``x`` in eval mode."""
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])


def mean_prediction(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The model's mean softmax (K,) over ``x`` in eval mode: what a device reports for the fleet's marginal."""
    return predictions(model, x, batch_size).mean(dim=0)
