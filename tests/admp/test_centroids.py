"""Centroid pseudo labels (admp.centroids): features, sums, the fleet's centroids, nearest-centroid labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from admp.centroids import (
    FeatureSums,
    add_sums,
    centroid_labels,
    class_sums,
    feature_dim,
    features_and_probs,
    nearest_centroid,
    normalised_features,
)
from admp.models import build_model, classifier_of


def test_features_get_a_constant_one_and_unit_length():
    out = normalised_features(torch.tensor([[3.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[3 / math.sqrt(10), 0.0, 1 / math.sqrt(10)], [0.0, 0.0, 1.0]]), atol=1e-6)


def test_class_sums_weight_features_by_soft_predictions():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    sums = class_sums(features, probs)
    # class 0: 0.9*[1,0] + 0.2*[0,1] + 0.5*[0.6,0.8] = [1.2, 0.6]; class 1: [0.1,0] + [0,0.8] + [0.3,0.4] = [0.4, 1.2]
    assert torch.allclose(sums.sums, torch.tensor([[1.2, 0.6], [0.4, 1.2]]), atol=1e-6)
    assert sums.mass.tolist() == pytest.approx([1.6, 1.4])
    assert torch.allclose(sums.centroids(), torch.tensor([[0.75, 0.375], [0.4 / 1.4, 1.2 / 1.4]]), atol=1e-6)


def test_the_fleets_sums_give_the_centroids_of_the_pooled_data():
    gen = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(30, 5, generator=gen), dim=1)
    probs = torch.softmax(torch.randn(30, 4, generator=gen), dim=1)
    parts = [class_sums(features[i : i + 10], probs[i : i + 10]) for i in (0, 10, 20)]
    assert torch.allclose(add_sums(parts).centroids(), class_sums(features, probs).centroids(), atol=1e-6)


def test_a_class_without_mass_has_no_centroid_and_never_wins():
    sums = FeatureSums(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([2.0, 0.0]))
    assert sums.centroids().tolist() == [[1.0, 0.0], [0.0, 0.0]]
    # [-1, 0] is opposite class 0's centroid (cosine -1), yet the empty class 1 is not chosen
    labels = nearest_centroid(torch.tensor([[-1.0, 0.0], [0.0, 1.0]]), sums.centroids())
    assert labels.tolist() == [0, 0]


def test_nearest_centroid_is_by_cosine_not_by_length():
    centroids = torch.tensor([[0.0, 0.1], [3.0, 3.0]])  # class 0 short, along y; class 1 long, at 45 degrees
    features = torch.tensor([[0.0, 1.0], [0.8, 0.6], [0.28, 0.96]])
    # cosines: [0,1] -> 1 vs 0.707; [0.8,0.6] -> 0.6 vs 0.99; [0.28,0.96] -> 0.96 vs 0.877
    assert nearest_centroid(features, centroids).tolist() == [0, 1, 0]


def test_features_are_the_classifiers_input():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    features, probs = features_and_probs(model, x)
    hidden = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.5, 0.0]])  # relu([x0, x1, x0 + x1])
    assert torch.allclose(features, normalised_features(hidden))
    assert torch.allclose(probs, torch.softmax(model(x), dim=1))
    assert classifier_of(model) is model[2] and feature_dim(model) == 4


def test_centroid_labels_use_the_given_centroids_or_the_datas_own():
    torch.manual_seed(0)
    model = build_model("lenet", 10, 0.25).eval()
    x = torch.rand(12, 1, 28, 28)
    own, sums = centroid_labels(model, x)
    assert own.shape == (12,) and sums.sums.shape == (10, 129) and float(sums.mass.sum()) == pytest.approx(12.0)
    assert torch.equal(own, nearest_centroid(features_and_probs(model, x)[0], sums.centroids()))
    only_three = torch.zeros(10, 129)
    only_three[3, -1] = 1.0  # one centroid, along the constant feature: every sample goes to class 3
    forced, _ = centroid_labels(model, x, only_three)
    assert forced.tolist() == [3] * 12
    with pytest.raises(ValueError, match="centroids have 10 feature dims, the model 129"):
        centroid_labels(model, x, torch.zeros(10, 10))
