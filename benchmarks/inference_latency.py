"""Dense vs physically pruned inference on CPU, one thread, batch 1 and 64, per model family.

Prunes each family at the given ratios with the channel choice of a top-k projection of random
scores (latency depends on the widths, not on which channels are kept) and writes JSON with
parameters, MACs and median/p90 latency. Usage:

    python benchmarks/inference_latency.py [--ratios 0.3 0.6] [--out benchmarks/results/latency.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from admp import admm
from admp.masks import group_sizes, zeros_masks
from admp.metrics import count_macs, count_params, cpu_latency_ms
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model

FAMILIES = (("lenet", 10), ("resnet", 10), ("cnn1d", 6))


def measure(model: torch.nn.Module, batch: int, repeats: int) -> dict[str, float]:
    """Median/p90 ms of one forward at ``batch`` on one thread."""
    x = torch.randn_like(example_input(model, batch))
    return cpu_latency_ms(model, x, threads=1, warmup=10, repeats=repeats)


def main() -> None:
    """Run the benchmark and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.6, 0.7])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/results/inference_latency.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for arch, classes in FAMILIES:
        dense = build_model(arch, classes).eval()
        groups = groups_of(dense)
        sizes = group_sizes(dense, groups)
        variants = [("dense", 0.0, dense)]
        for p in args.ratios:
            scores = {g: torch.rand(c) for g, c in sizes.items()}
            keep = admm.z_step(scores, zeros_masks(sizes), p)
            variants.append((f"pruned-{p}", p, prune_model(dense, groups, keep, example_input(dense))))
        for name, p, model in variants:
            row = {
                "arch": arch,
                "variant": name,
                "prune_ratio": p,
                "params": count_params(model),
                "macs": count_macs(model, example_input(model)),
            }
            for batch in (1, 64):
                lat = measure(model, batch, args.repeats if batch == 1 else max(20, args.repeats // 10))
                row[f"b{batch}_median_ms"] = round(lat["median_ms"], 4)
                row[f"b{batch}_p90_ms"] = round(lat["p90_ms"], 4)
            results.append(row)
            print(
                f"{arch:7s} {name:12s} params {row['params']:>8,} MACs {row['macs']:>11,} "
                f"b1 {row['b1_median_ms']:8.3f} ms  b64 {row['b64_median_ms']:8.3f} ms"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "machine": platform.machine(),
                "processor": platform.processor(),
                "threads": 1,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
