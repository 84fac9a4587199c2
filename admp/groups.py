"""What every model of the platform shares, built-in or a user's (``admp.custom``): its channel groups
and its classifier. Kept apart from ``admp.models`` so that ``admp.custom`` needs nothing of it."""

from __future__ import annotations

from torch import nn

GroupSpec = dict[str, list[str]]  # group name -> names of the BatchNorm modules it gates


def classifier_of(model: nn.Module) -> nn.Linear:
    """The model's classifier: its last ``nn.Linear`` module (the features are its input)."""
    linears = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to take features from")
    return linears[-1]
