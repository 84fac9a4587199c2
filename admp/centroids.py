"""Pseudo labels refined by class centroids of the student's features (SHOT's self-labelling,
Liang et al. 2020), computed from sums that a fleet can aggregate.

The feature of a sample is the input of the model's classifier (its last ``nn.Linear``), with a
constant 1 appended and scaled to unit length, as in SHOT. A class centroid is the soft-weighted
mean of the features, c_k = sum_i p_ik f_i / sum_i p_ik, with p_i the model's softmax. In a
fleet each device reports only its per-class sums S_k = sum_i p_ik f_i (K, D+1) and masses
M_k = sum_i p_ik (K,); the server adds them up, and c_k = sum_d S_dk / sum_d M_dk is exactly the
centroid of the pooled data. A device then labels each of its samples with the class of the
nearest centroid by cosine distance; classes without mass take no label.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from admp.masks import MaskDict, gated
from admp.models import GroupSpec, classifier_of
from admp.trainer import recalibrate_bn

MIN_MASS = 1e-6  # a class whose soft mass is below this has no centroid


def feature_dim(model: nn.Module) -> int:
    """D + 1: the length of a normalised feature (the classifier's input width, plus the constant)."""
    return classifier_of(model).in_features + 1


@dataclass(frozen=True)
class FeatureSums:
    """Per-class soft sums of normalised features (K, D+1) and the classes' soft masses (K,)."""

    sums: torch.Tensor
    mass: torch.Tensor

    def centroids(self) -> torch.Tensor:
        """(K, D+1) class centroids; a row of zeros for a class without mass."""
        has_mass = (self.mass > MIN_MASS).unsqueeze(1)
        return torch.where(has_mass, self.sums / self.mass.clamp_min(MIN_MASS).unsqueeze(1), 0.0)


def normalised_features(raw: torch.Tensor) -> torch.Tensor:
    """(N, D) classifier inputs -> (N, D+1): a constant 1 appended, each row scaled to unit length."""
    ones = torch.ones(len(raw), 1, dtype=raw.dtype)
    return F.normalize(torch.cat([raw, ones], dim=1), dim=1)


@torch.no_grad()
def features_and_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised features (N, D+1), softmax (N, K)) of ``model`` in eval mode over ``x``."""
    captured: list[torch.Tensor] = []
    hook = classifier_of(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    model.eval()
    try:
        probs = torch.cat([F.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])
    finally:
        hook.remove()
    raw = torch.cat(captured).flatten(1).float()
    return normalised_features(raw), probs


def class_sums(features: torch.Tensor, probs: torch.Tensor) -> FeatureSums:
    """S = P^T F (K, D+1) and M = sum_i p_i (K,): what a device reports for the fleet's centroids."""
    return FeatureSums(probs.T @ features, probs.sum(dim=0))


def add_sums(parts: list[FeatureSums]) -> FeatureSums:
    """The fleet's sums: the devices' sums and masses added up (same shapes)."""
    return FeatureSums(torch.stack([p.sums for p in parts]).sum(0), torch.stack([p.mass for p in parts]).sum(0))


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) class of the nearest centroid by cosine distance; rows of zeros (no mass) never win."""
    cosine = features @ F.normalize(centroids, dim=1).T  # (N, K); unit features
    cosine = cosine.masked_fill(centroids.abs().sum(dim=1) == 0, float("-inf"))
    return cosine.argmax(dim=1)


def centroid_labels(
    model: nn.Module, x: torch.Tensor, fleet_centroids: torch.Tensor | None = None
) -> tuple[torch.Tensor, FeatureSums]:
    """Pseudo labels (N,) of ``x`` by the nearest centroid, and this data's ``FeatureSums``.

    With ``fleet_centroids`` (K, D+1) the labels follow the fleet's centroids (the server's
    aggregate of the last round); without them (the first round) the centroids of ``x`` itself.
    The sums come from the same forward pass, so a device's report costs no extra computation.
    """
    features, probs = features_and_probs(model, x)
    sums = class_sums(features, probs)
    centroids = fleet_centroids if fleet_centroids is not None else sums.centroids()
    if centroids.shape[1] != features.shape[1]:
        raise ValueError(f"centroids have {centroids.shape[1]} feature dims, the model {features.shape[1]}")
    return nearest_centroid(features, centroids), sums


def student_pseudo_labels(
    student: nn.Module,
    x: torch.Tensor,
    fleet_centroids: torch.Tensor | None = None,
    masks: tuple[GroupSpec, MaskDict] | None = None,
    local_bn: bool = False,
) -> tuple[torch.Tensor, FeatureSums]:
    """``centroid_labels`` of a student (gated by ``masks``, groups and hard mask m, in the mask phase).

    The features come from a copy whose BatchNorm statistics are re-estimated on ``x`` (under the
    gates) in the mask phase — the running statistics that training left were taken under the
    adversary's attenuation s and do not match the s = 1 network — and with ``local_bn``, where
    every device is a domain of its own and the global running statistics fit none of them.
    """
    if masks is None and not local_bn:
        return centroid_labels(student, x, fleet_centroids)
    probe = copy.deepcopy(student)
    recalibrate_bn(probe, x, masks=masks)
    with gated(probe, *masks) if masks is not None else nullcontext():
        return centroid_labels(probe, x, fleet_centroids)
