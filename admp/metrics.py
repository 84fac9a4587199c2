"""Model measurements: parameters, MACs, channels kept, accuracy, CPU latency."""

from __future__ import annotations

import time

import torch
import torch_pruning as tp
from torch import nn

from admp.models import GroupSpec


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (Torch-Pruning's op counter)."""
    macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def channels_kept(model: nn.Module, groups: GroupSpec) -> dict[str, int]:
    """Width of each channel group in ``model`` (after pruning: the channels that remain)."""
    modules = dict(model.named_modules())
    return {g: int(modules[layers[0]].num_features) for g, layers in groups.items()}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in percent of ``model`` in eval mode on (x, y)."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / max(len(x), 1)


@torch.no_grad()
def cpu_latency_ms(
    model: nn.Module, example: torch.Tensor, threads: int = 1, warmup: int = 20, repeats: int = 100
) -> dict[str, float]:
    """Median and p90 wall time in ms of one forward on ``example`` with ``threads`` CPU threads."""
    model.eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return {"median_ms": times[len(times) // 2], "p90_ms": times[int(0.9 * (len(times) - 1))]}


def model_report(model: nn.Module, groups: GroupSpec, example: torch.Tensor) -> dict[str, int | dict[str, int]]:
    """Parameters, MACs and per-group channel counts in one dict, for summaries."""
    return {
        "params": count_params(model),
        "macs": count_macs(model, example),
        "channels": channels_kept(model, groups),
    }
