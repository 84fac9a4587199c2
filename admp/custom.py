"""Bring your own model: ``model.arch: "package.module:factory"`` builds a user's ``nn.Module``.

The factory is called as ``factory(num_classes=K, input_shape=shape[, width=w])`` (the keywords it
accepts). Its channel groups are found by Torch-Pruning's dependency graph: every set of BatchNorm
layers whose output channels are coupled (a conv or linear layer followed by BatchNorm; residual
adds, depthwise convs and concatenations handled by the graph) is one group, so masks, ADMM,
physical removal, ONNX export and the federated protocol work unchanged. The model is wrapped with
the input normalisation every family has (source statistics inside the exported model).

Every requirement is checked when the model is built, before any training: the factory imports and
returns a module, the module takes one sample batch of the data's shape and returns (N, K) logits,
its last ``nn.Linear`` is the classifier (the features for centroid pseudo labels), and at least one
BatchNorm-gated group exists.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from admp.augment import InputNorm
from admp.groups import GroupSpec, classifier_of


class UserModel(nn.Module):
    """A user's network behind the project's input normalisation, with its traced channel groups."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.norm = InputNorm(self.input_shape[0])  # channels (C, ...) or features (D,)
        self.net = net
        self.groups: GroupSpec = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(self.norm(x))
        return logits

    def channel_groups(self) -> GroupSpec:
        """The groups Torch-Pruning's graph found when the model was built (``traced_groups``)."""
        return self.groups


def traced_groups(model: nn.Module, example: torch.Tensor) -> GroupSpec:
    """Groups of coupled BatchNorm layers, in module order, each named after its first BatchNorm;
    the classifier (last Linear) is never a root, so the class count stays."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    found: list[list[str]] = []
    for group in dg.get_all_groups(
        ignored_layers=[classifier_of(model)], root_module_types=(nn.Conv1d, nn.Conv2d, nn.Linear)
    ):
        bns = {
            names[dep.target.module]
            for dep, _ in group
            if isinstance(dep.target.module, nn.modules.batchnorm._BatchNorm)
            and dep.handler == tp.prune_batchnorm_out_channels
        }
        if bns:
            found.append(sorted(bns, key=order.__getitem__))
    found.sort(key=lambda bns: order[bns[0]])
    return {bns[0]: bns for bns in found}


def _factory(arch: str) -> Any:
    """The callable ``arch`` names (ValueError naming what failed). The working directory is searched
    too (as ``python -m`` and uvicorn do), so a module beside the scenario needs no install."""
    module_name, attr = arch.split(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{arch!r}: cannot import {module_name!r} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{arch!r}: {module_name} has no callable {attr!r}")
    return factory


def build_user_model(arch: str, num_classes: int, width: float, input_shape: tuple[int, ...]) -> nn.Module:
    """The user's model for samples of ``input_shape``, wrapped and checked (ValueError naming the
    problem: import, return type, output shape, classifier, prunable groups)."""
    factory = _factory(arch)
    offered = {"num_classes": num_classes, "input_shape": tuple(input_shape), "width": width}
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    net = factory(**{k: v for k, v in offered.items() if takes_any or k in params})
    if not isinstance(net, nn.Module):
        raise ValueError(f"{arch!r} returned {type(net).__name__}, not a torch.nn.Module")
    model = UserModel(net, input_shape)
    example = torch.zeros(2, *input_shape)
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as exc:  # any failure of the user's forward on the data's shape
        raise ValueError(
            f"{arch!r} cannot take samples of shape {tuple(input_shape)} ({type(exc).__name__}: {exc})"
        ) from exc
    if tuple(out.shape) != (2, num_classes):
        raise ValueError(f"{arch!r} returns {tuple(out.shape)} for 2 samples; expected (2, {num_classes}) logits")
    if classifier_of(model).out_features != num_classes:
        raise ValueError(f"{arch!r}: the last nn.Linear must be the classifier ({num_classes} outputs)")
    model.groups = traced_groups(model, example[:1])
    if not model.groups:
        raise ValueError(f"{arch!r}: no prunable channels: no conv or linear layer is followed by a BatchNorm")
    return model.train()
