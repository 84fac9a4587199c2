"""The latency search against its budget, and the uniform ratio at the same budget, in ONNX Runtime.

For every model family (seeded initial weights: the search reads only the L1 norms of the filters and
the measured latency) and every budget (a share of the dense model's latency at batch 1 and 64): the
plan of ``admp_export.latency.search``, its model measured again afterwards (twice the search's
repeats), whether it meets the budget within 10 % at both batches, and the uniform-ratio model of the
same budget (the smallest p on a 0.05 grid whose model meets it, which the search finds first and never
cuts a group below), measured again too. Both are reported with their channels, parameters and MACs, so
the plan's use of the same time is visible. Usage:

    python benchmarks/latency_plan.py [--budgets 0.7 0.5 0.3] [--archs lenet resnet cnn1d] [--repeats 1000]
                                      [--out benchmarks/results/latency_plan.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import write_runtime_report  # this folder is on the path of a script run from it

from admp.admm import keep_count
from admp.masks import group_sizes
from admp.metrics import count_macs, count_params
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp_export.latency import keep_first, measured_ms, search

CLASSES = {"lenet": (10, None), "resnet": (10, None), "cnn1d": (6, (6, 128))}
TOLERANCE = 0.10


def described(
    model: torch.nn.Module, counts: dict[str, int], ms: tuple[float, float], budget: tuple[float, float]
) -> dict[str, Any]:
    """Channels, parameters, MACs, latency and the budget check of one pruned model."""
    over = [m / b - 1.0 for m, b in zip(ms, budget, strict=True)]
    return {
        "channels": counts,
        "params": count_params(model),
        "macs": count_macs(model, example_input(model)),
        "ms": {"batch_1": ms[0], "batch_64": ms[1]},
        "over_budget": {"batch_1": over[0], "batch_64": over[1]},
        "met": all(v <= TOLERANCE for v in over),
    }


def family(arch: str, budgets: list[float], repeats: int, folder: Path) -> dict[str, Any]:
    """One family: the dense model's latency, then per budget the plan and the uniform model."""
    classes, shape = CLASSES[arch]
    torch.manual_seed(0)
    dense = build_model(arch, classes, 1.0, shape).eval()
    groups = groups_of(dense)
    sizes = group_sizes(dense, groups)
    example = example_input(dense)

    def pruned(counts: dict[str, int]) -> torch.nn.Module:
        return prune_model(dense, groups, keep_first(sizes, counts), example)

    rows = []
    for share in budgets:
        try:
            plan = search(dense, groups, share, repeats)
        except ValueError as unreachable:  # this runtime's floor is slower than the budget: say so, go on
            rows.append({"budget_share": share, "unreachable": str(unreachable)})
            print(f"{arch} {share:g}: {unreachable}", flush=True)
            continue
        budget = plan.budget_ms
        model = pruned(plan.counts)
        planned = described(model, plan.counts, measured_ms(model, folder, 2 * repeats), budget)
        uniform: dict[str, Any] | None = None
        if plan.uniform_ratio is not None:  # the uniform model the search found at the same budget, again
            counts = {g: keep_count(c, plan.uniform_ratio) for g, c in sizes.items()}
            candidate = pruned(counts)
            ms = measured_ms(candidate, folder, 2 * repeats)
            uniform = described(candidate, counts, ms, budget) | {"prune_ratio": plan.uniform_ratio}
        rows.append(
            {
                "search_dense_ms": list(plan.dense_ms),
                "budget_share": share,
                "budget_ms": list(budget),
                "plan": planned,
                "steps": len(plan.steps),
                "uniform": uniform,
            }
        )
        print(
            f"{arch} {share:g}: plan {plan.counts} {planned['ms']}, uniform {uniform and uniform['channels']}",
            flush=True,
        )
    dense_ms = measured_ms(dense, folder, 2 * repeats)
    return {"channels": sizes, "params": count_params(dense), "dense_ms": list(dense_ms), "budgets": rows}


def main() -> None:
    """Measure every family at every budget; write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    parser.add_argument("--archs", nargs="+", choices=sorted(CLASSES), default=["lenet", "resnet", "cnn1d"])
    parser.add_argument("--repeats", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_plan.json"))
    args = parser.parse_args()
    if any(not 0 < b < 1 for b in args.budgets) or args.repeats < 1:
        parser.error("--budgets must lie in (0, 1) and --repeats be at least 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        families = {arch: family(arch, args.budgets, args.repeats, Path(tmp)) for arch in args.archs}
    write_runtime_report(args.out, families)


if __name__ == "__main__":
    main()
