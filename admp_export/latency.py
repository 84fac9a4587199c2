"""Latency-aware per-group ratios: a greedy search over the channel groups' widths, each candidate measured
in the target runtime (ONNX Runtime on this CPU, one thread, batch 1 and 64).

NPAS (arXiv 2012.00596) chooses per-layer ratios with the latency its compiler measures, not a uniform
ratio. Here the latency table of ``benchmarks/latency_table.py`` showed that groups do not add up (LeNet at
p = 0.6: 0.033 ms measured against 0.017 ms predicted at batch 1) and that latency is not monotone in width,
so the search measures every candidate instead of predicting it. From the dense model, each step cuts one
group by a step of its channels (1/16 of its width): the group whose cut saves the most measured time,
relative to the budget at each batch, per unit of cost, the log-ratio of the group's kept L1 mass before
and after the cut (``removal_cost``: its weakest kept filters go, by the cloud's data-free criterion that
naive and FedADMP's start use). It stops once both batches meet the budget. No group is cut below the
width the uniform ratio of the same budget keeps (the first p on a 0.05 grid whose model meets it,
measured first): at equal latency the plan is at least as wide as the uniform model in every group. A
search that reaches the floors stops there, with the uniform model, which met the budget when the grid
measured it (measured again at the budget's edge it can miss by noise). Then a
fill pass spends what the last cut left under the budget (measured latency is not monotone in width: a
group can often grow a step at no cost): of the groups one step below their width, the one whose step
back adds the most kept L1 mass and still meets the budget grows, until none does. The result is a
ratio per group (``admp.group_ratios``), which every pruning method of a run then uses in place of the
uniform p.

At batch 1 these models run in tens of microseconds, mostly the runtime's fixed cost per node, so the
differences the search weighs are a few percent: a candidate's batch-1 figure is the median of
``repeats`` calls (1,000 by default, about 0.5 % spread on this CPU), its batch-64 one of a fiftieth;
the dense model's, which sets the budget, is the fastest of three such medians (``anchor_ms``).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from admp.admm import keep_count
from admp.masks import MaskDict, group_sizes
from admp.models import GroupSpec, example_input
from admp.surgery import l1_filter_scores, prune_model
from admp_export.formats import export_onnx

STEP_SHARE = 1 / 16  # a step cuts this share of a group's channels (at least one)
UNIFORM_STEP = 0.05  # the grid of uniform ratios whose first to meet the budget sets the floors
BATCHES = (1, 64)


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median ms of ``call()`` over ``repeats`` calls, after a tenth as many (at least 3) to warm up."""
    for _ in range(max(repeats // 10, 3)):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def onnx_latency_ms(path: Path, input_shape: tuple[int, ...], batch: int, repeats: int) -> float:
    """Median ms of one ONNX Runtime call on ``batch`` random inputs, one thread, through the device
    runtime's session (``admp_device.infer.open_session``: the artefact's own session options)."""
    from admp_device.infer import open_session

    session = open_session(path, threads=1)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)}
    return median_ms(lambda: session.run(None, feed), repeats)


def onnx_latency(path: Path, input_shape: tuple[int, ...], repeats: int = 200) -> dict[str, float]:
    """``onnx_latency_ms`` at batch 1 (``repeats`` calls) and 64 (a tenth, at least 5), keyed ``batch_<b>``."""
    return {
        f"batch_{b}": onnx_latency_ms(path, input_shape, b, repeats if b == 1 else max(5, repeats // 10))
        for b in BATCHES
    }


def keep_first(sizes: dict[str, int], widths: dict[str, int]) -> MaskDict:
    """Keep masks with the first ``widths[g]`` channels of each group (all of a group not named); which
    channels are kept does not change the time."""
    return {g: (torch.arange(c) < widths.get(g, c)).float() for g, c in sizes.items()}


def measured_ms(model: nn.Module, folder: Path, repeats: int) -> tuple[float, float]:
    """Median ms of the model's ONNX export at batch 1 (``repeats`` calls) and 64 (a fiftieth, at least 5)."""
    example = example_input(model)
    path = export_onnx(model, example, folder / "candidate.onnx")
    shape = tuple(int(d) for d in example.shape[1:])
    return onnx_latency_ms(path, shape, 1, repeats), onnx_latency_ms(path, shape, 64, max(5, repeats // 50))


def anchor_ms(measure: Callable[[], tuple[float, float]], passes: int = 3) -> tuple[float, float]:
    """The fastest of ``passes`` measurements at each batch: the dense model's time, which every budget is
    a share of. Load from other processes (a previous run's workers still stopping) only adds time, and a
    slow pass here would loosen the whole budget by as much."""
    times = [measure() for _ in range(passes)]
    return min(t[0] for t in times), min(t[1] for t in times)


def removal_cost(scores: torch.Tensor, kept: int, step: int) -> float:
    """ln(M_before / M_after), M the L1 mass of a group's kept channels (its ``kept`` strongest) before and
    after cutting its ``step`` weakest: the share of the group's remaining capacity a cut takes, so a cut
    of a group already narrow costs more (16 -> 15 equal channels: ln(16/15) = 0.065; 2 -> 1: ln 2)."""
    ordered = torch.sort(scores.detach().abs(), descending=True).values.double()
    before, after = float(ordered[:kept].sum()), float(ordered[: kept - step].sum())
    if before <= 0:
        return 0.0
    return math.log(before / after) if after > 0 else math.inf


def meets(latency: tuple[float, float], budget: tuple[float, float]) -> bool:
    """Whether both batches are within their budget."""
    return all(t <= b for t, b in zip(latency, budget, strict=True))


@dataclass
class LatencyPlan:
    """The search's result: keep counts and ratios per group, and the measured latencies (ms, b1 / b64)."""

    counts: dict[str, int]
    ratios: dict[str, float]
    dense_ms: tuple[float, float]
    budget_ms: tuple[float, float]
    measured_ms: tuple[float, float]
    steps: list[dict[str, Any]] = field(default_factory=list)
    uniform_ratio: float | None = None  # the uniform ratio that meets the same budget (its keep counts: floors)
    floors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-able record of the plan (the run's ``latency_plan.json``)."""
        keys = [f"batch_{b}" for b in BATCHES]
        return {
            "counts": self.counts,
            "ratios": self.ratios,
            "dense_ms": dict(zip(keys, self.dense_ms, strict=True)),
            "budget_ms": dict(zip(keys, self.budget_ms, strict=True)),
            "measured_ms": dict(zip(keys, self.measured_ms, strict=True)),
            "uniform_ratio": self.uniform_ratio,
            "floors": self.floors,
            "steps": self.steps,
        }


def search(model: nn.Module, groups: GroupSpec, fraction: float, repeats: int = 1000) -> LatencyPlan:
    """Per-group keep counts whose pruned model runs within ``fraction`` of the dense model's measured
    latency at batch 1 and 64 (see the module docstring); ValueError when no plan reaches it."""
    if not 0 < fraction < 1:
        raise ValueError(f"latency budget must be a share in (0, 1), got {fraction}")
    model = model.eval()
    example = example_input(model)
    sizes = group_sizes(model, groups)
    scores = l1_filter_scores(model, groups, example)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def timed(counts: dict[str, int], n: int = repeats) -> tuple[float, float]:
            return measured_ms(prune_model(model, groups, keep_first(sizes, counts), example), folder, n)

        dense = anchor_ms(lambda: measured_ms(model, folder, repeats))
        budget = (fraction * dense[0], fraction * dense[1])
        uniform = uniform_at(sizes, budget, timed)
        floors = (
            {g: keep_count(c, uniform) for g, c in sizes.items()} if uniform is not None else dict.fromkeys(sizes, 1)
        )
        counts, current, steps = dict(sizes), dense, []
        while not meets(current, budget):
            options = []
            for g, c in sizes.items():
                step = min(group_step(c), counts[g] - floors[g])
                if step < 1:
                    continue
                candidate = counts | {g: counts[g] - step}
                latency = timed(candidate)
                saved = sum(max(0.0, (now - new) / b) for now, new, b in zip(current, latency, budget, strict=True))
                cost = removal_cost(scores[g], counts[g], step)
                options.append((saved / max(cost, 1e-12), saved, -cost, g, candidate, latency))
            if not options:
                if uniform is None:
                    raise ValueError(f"no plan reaches {fraction:g} of the dense latency: every group is at its floor")
                break  # at the floors: the uniform model, which met the budget when the grid measured it
            _, saved, _, group, counts, current = max(options, key=lambda o: (o[1] > 0, o[0], o[2]))
            steps.append({"group": group, "keep": counts[group], "ms": list(current), "saved": saved})
        counts = fill(counts, sizes, scores, budget, timed, steps)
        final = timed(counts, 2 * repeats)
    ratios = {g: 1.0 - counts[g] / sizes[g] for g in sizes}
    return LatencyPlan(counts, ratios, dense, budget, final, steps, uniform, floors)


def group_step(size: int) -> int:
    """The channels one step of the search moves in a group of ``size``: 1/16 of it, at least one."""
    return max(1, round(size * STEP_SHARE))


def fill(
    counts: dict[str, int],
    sizes: dict[str, int],
    scores: dict[str, torch.Tensor],
    budget: tuple[float, float],
    timed: Callable[[dict[str, int]], tuple[float, float]],
    steps: list[dict[str, Any]],
) -> dict[str, int]:
    """Grow groups back by a step while the model still meets the budget: each time the group whose step
    adds the most kept L1 mass (``removal_cost`` of the step, read backwards) among those that fit;
    each growth is appended to ``steps`` with ``"fill": True``."""
    while True:
        options = []
        for g, c in sizes.items():
            step = min(group_step(c), c - counts[g])
            if step < 1:
                continue
            candidate = counts | {g: counts[g] + step}
            latency = timed(candidate)
            if meets(latency, budget):
                options.append((removal_cost(scores[g], candidate[g], step), g, candidate, latency))
        if not options:
            return counts
        gain, group, counts, latency = max(options, key=lambda o: o[0])
        steps.append({"group": group, "keep": counts[group], "ms": list(latency), "gain": gain, "fill": True})


def uniform_at(
    sizes: dict[str, int], budget: tuple[float, float], timed: Callable[[dict[str, int]], tuple[float, float]]
) -> float | None:
    """The smallest uniform ratio on a 0.05 grid whose model meets the budget (measured), or None."""
    for step in range(1, 20):
        p = round(UNIFORM_STEP * step, 2)
        if meets(timed({g: keep_count(c, p) for g, c in sizes.items()}), budget):
            return p
    return None
