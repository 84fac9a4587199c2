"""The latency table of the target runtime: ONNX Runtime on this CPU, each channel group at each width.

The first step of latency-aware per-group ratios (NPAS, arXiv 2012.00596, measures its compiler's
latency the same way): for every model family, every channel group is pruned alone to each width of
a grid (the other groups whole), exported to ONNX and timed with one ONNX Runtime thread at batch 1
and 64 (median of repeated runs on random inputs; which channels are kept does not change the time).
The table also tests the additive model a budget search would use: the latency of the uniform-ratio
models predicted as dense + sum over groups of (group at its width - dense), against their measured
latency. Usage:

    python benchmarks/latency_table.py [--widths 1 0.8 0.6 0.4 0.2] [--ratios 0.6 0.8] [--repeats 200]
                                       [--archs lenet resnet cnn1d] [--out benchmarks/results/latency_table.json]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import write_runtime_report  # this folder is on the path of a script run from it

from admp.masks import group_sizes
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp_export.formats import export_onnx
from admp_export.latency import BATCHES, keep_first, onnx_latency

CLASSES = {"lenet": 10, "resnet": 10, "cnn1d": 6}


def timed(model: torch.nn.Module, folder: Path, name: str, repeats: int) -> dict[str, float]:
    """Median ms of the model's ONNX export at each batch, one ONNX Runtime thread."""
    example = example_input(model)
    path = export_onnx(model, example, folder / f"{name}.onnx")
    times = onnx_latency(path, tuple(int(d) for d in example.shape[1:]), repeats)
    return {f"b{b}_ms": round(times[f"batch_{b}"], 4) for b in BATCHES}


def family_table(arch: str, widths: list[float], ratios: list[float], repeats: int, folder: Path) -> dict[str, Any]:
    """One family's table: dense, every group at every width, and the additive check at ``ratios``."""
    torch.manual_seed(0)
    dense = build_model(arch, CLASSES[arch]).eval()
    groups = groups_of(dense)
    sizes = group_sizes(dense, groups)

    def pruned(counts: dict[str, int]) -> torch.nn.Module:
        return prune_model(dense, groups, keep_first(sizes, counts), example_input(dense))

    base = timed(dense, folder, f"{arch}-dense", repeats)
    table: dict[str, list[dict[str, float]]] = {}
    for g, c in sizes.items():  # the grid's widths, and those of the uniform models the check needs
        kept = sorted({max(1, round(w * c)) for w in [*widths, *(1 - p for p in ratios)]}, reverse=True)
        table[g] = [{"keep": k, **timed(pruned({g: k}), folder, f"{arch}-{g}-{k}", repeats)} for k in kept]
    checks = []
    for p in ratios:
        counts = {g: max(1, round((1 - p) * c)) for g, c in sizes.items()}
        measured = timed(pruned(counts), folder, f"{arch}-uniform-{p}", repeats)
        row: dict[str, float] = {"prune_ratio": p}
        for b in BATCHES:
            key = f"b{b}_ms"
            own = {g: next(r[key] for r in table[g] if r["keep"] == counts[g]) for g in sizes}
            predicted = base[key] + sum(own[g] - base[key] for g in sizes)
            row |= {f"{key}_measured": measured[key], f"{key}_predicted": round(predicted, 4)}
        checks.append(row)
    return {"channels": sizes, "dense": base, "groups": table, "uniform": checks}


def main() -> None:
    """Measure every family; print a line per family and write the JSON table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    parser.add_argument("--ratios", type=float, nargs="*", default=[0.6, 0.8])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--archs", nargs="+", choices=sorted(CLASSES), default=["lenet", "resnet", "cnn1d"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_table.json"))
    args = parser.parse_args()
    if any(not 0 < w <= 1 for w in args.widths) or any(not 0 <= p < 1 for p in args.ratios) or args.repeats < 1:
        parser.error("--widths must lie in (0, 1], --ratios in [0, 1), --repeats be at least 1")
    torch.set_num_threads(1)
    families = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            families[arch] = family_table(arch, args.widths, args.ratios, args.repeats, Path(tmp))
            print(f"{arch}: dense b1 {families[arch]['dense']['b1_ms']} ms, b64 {families[arch]['dense']['b64_ms']} ms")
    write_runtime_report(args.out, families)


if __name__ == "__main__":
    main()
