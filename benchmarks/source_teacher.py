"""Source-only teachers with the source recipe, on the whole official target test sets.

For each task scenario, USPS layout and seed: train the teacher exactly as a run does
(``admp.teacher.prepare_teacher``: normalisation, augmentation, label smoothing, epoch chosen on the
source validation split) and measure it on the target domain's official test set (labels for
evaluation only). Writes ``benchmarks/results/source_teacher.json`` as it goes.

Each row also holds the teacher's accuracy on the source validation split under random looks
(``admp.augment.randomise_appearance``, a fixed seed; colour images only): how well it ignores colour
and texture, measured with source labels alone, which is what chooses the input layer
(``--inputs``: the run's default, source statistics, per-image statistics, grey conversion, or both).

    python benchmarks/source_teacher.py --data-dir ../shared/data --seeds 0 1 2
    python benchmarks/source_teacher.py --tasks colour_digits --layouts resize --inputs source image grey grey+image
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from admp.augment import randomise_appearance
from admp.metrics import accuracy
from admp.teacher import prepare_teacher
from admp_config.schema import load_config
from admp_config.seeding import torch_generator
from admp_data.sources import Split
from admp_data.tasks import build_task

ROOT = Path(__file__).resolve().parents[1]
INPUTS = {  # the teacher's input layer (admp.augment.InputNorm): its config overrides
    "auto": ["teacher.input_stats=auto", "teacher.grey_input=false"],  # what a run does by default
    "source": ["teacher.input_stats=source", "teacher.grey_input=false"],
    "image": ["teacher.input_stats=image", "teacher.grey_input=false"],
    "grey": ["teacher.input_stats=source", "teacher.grey_input=true"],
    "grey+image": ["teacher.input_stats=image", "teacher.grey_input=true"],
}
SCENARIOS = {
    "mnist_usps": "mnist_usps.yaml",
    "usps_mnist": "usps_mnist.yaml",
    "mnist_colour": "mnist_colour.yaml",
    "colour_digits": "colour_digits.yaml",
}


def measure(
    task_name: str, layout: str, seed: int, data_dir: str, extra: list[str], inputs: str = "auto"
) -> dict[str, object]:
    """Train one teacher with the input layer ``inputs`` (``INPUTS``) and return its accuracies on the
    source validation split, plain and in random looks, and on the target's test set."""
    extra = [*extra, *INPUTS[inputs]]
    scenario = ROOT / "simulations" / "scenarios" / SCENARIOS[task_name]
    cfg = load_config(scenario, [f"data.data_dir={data_dir}", f"data.usps_layout={layout}", f"run.seed={seed}", *extra])
    task = build_task(cfg.data, seed)
    start = time.perf_counter()
    teacher, info = prepare_teacher(cfg, task)
    val = task.source_val
    looks = None
    if val.x.dim() == 4 and val.x.shape[1] == 3:  # the source's validation digits in random looks
        looks = accuracy(teacher, randomise_appearance(val.x, torch_generator(seed, "val-looks")), val.y)
    target = task.target_test  # the official test split of the target domain, every sample
    if cfg.data.shifts_enabled():  # the devices' own looks: their test splits, as each device sees it
        tests = [task.device(i).test for i in range(task.num_devices)]
        target = Split(torch.cat([t.x for t in tests]), torch.cat([t.y for t in tests]))
    return {
        "task": task_name,
        "layout": layout,
        "seed": seed,
        "input": inputs,
        "source_val_acc": info["source_val_acc"],
        "source_val_looks_acc": looks,
        "kept_epoch": info.get("kept_epoch"),
        "epochs": cfg.teacher.epochs,
        "target_test_acc": accuracy(teacher, target.x, target.y),
        "target_test_size": len(target),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    """Run the grid and write the JSON report (rewritten after every teacher)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(SCENARIOS))
    parser.add_argument("--layouts", nargs="+", default=["resize", "box"])
    parser.add_argument("--inputs", nargs="+", choices=list(INPUTS), default=["auto"], help="input layers")
    parser.add_argument("--set", action="append", default=[], help="extra config overrides")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "source_teacher.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for task_name in args.tasks:
        for layout in args.layouts:
            for seed in args.seeds:
                for name in args.inputs:
                    rows.append(measure(task_name, layout, seed, args.data_dir, args.set, name))
                    print(json.dumps(rows[-1]), flush=True)
                    Path(args.out).write_text(json.dumps({"overrides": args.set, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
