"""Factories a run must refuse before training (tests/admp/test_byo_model.py): the user's mistakes."""

from __future__ import annotations

import torch
from torch import nn


def without_batchnorm(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Nothing to gate: no layer is followed by a BatchNorm."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))


def not_a_module(num_classes: int) -> str:
    return "a string"
