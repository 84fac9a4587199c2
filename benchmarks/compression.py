"""Accuracy against bytes and latency of every integer model of a compression study, on the devices.

For every finished run of a study folder (``runs.csv``, e.g. ``results/compression`` of
``studies/compression.yaml``) and every device of the run (rebuilt from the run's ``config.yaml``):
the device's model is made with the shipped tools (``fedadmp adapt-bn`` where the run infers with
per-device BN), then ONNX Runtime scores the device's labeled test split. A run that quantized in
federation (its summary has ``quantization``) is measured as shipped: its ``pruned_model.onnx`` is the
integer artefact, and its figure is compared with the summary's. A float run is measured as shipped
(32 bits) and after post-training quantization through the device tool (``fedadmp quantize --weights B``
on each device's model, B in ``--bits``). Bytes are the model's tensor bytes (``admp_export.integer``)
against the dense float32 model of the same architecture; latency is ONNX Runtime's median at batch 1
and 64, one thread, through the device runtime's session. Writes ``compression.json`` (resumable: runs
already measured are kept), ``compression.md`` (means and spreads over seeds) and plots of accuracy
against bytes and against latency, into the study folder; ``--retime`` measures every row's latency again
(when the machine was busy during the first pass).

    python benchmarks/compression.py results/compression [--bits 8 4 2] [--retime]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from admp.teacher import initial_model
from admp_config.schema import load_config
from admp_data.tasks import build_task
from admp_device.infer import open_session
from admp_export.integer import model_tensor_bytes, tensor_bytes
from admp_export.latency import onnx_latency
from simulations.cli import main as fedadmp


def correct(path: Path, x: torch.Tensor, y: torch.Tensor) -> int:
    """Correct predictions of an ONNX model on (x, y), through the device runtime's session."""
    session = open_session(path)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return int((torch.from_numpy(np.asarray(logits)).argmax(1) == y).sum())


def tool(*args: str) -> None:
    """One device-tool command; an error names it."""
    if fedadmp(list(args)) != 0:
        raise RuntimeError(f"fedadmp {' '.join(args)} failed")


def device_models(run: Path, local: bool, task: Any, folder: Path) -> list[Path]:
    """Each device's model as shipped: its own adapted copy (``adapt-bn``) or the run's export."""
    models = []
    for i in range(task.num_devices):
        if not local:
            models.append(run / "pruned_model.onnx")
            continue
        np.savez(folder / "local.npz", x=task.device(i).train.x.numpy())
        out = folder / f"device{i}.onnx"
        tool("adapt-bn", str(run / "pruned_model.pt"), "--data", str(folder / "local.npz"), "--out", str(out))
        models.append(out)
    return models


def quantized(models: list[Path], bits: int, folder: Path) -> list[Path]:
    """Each device model after ``fedadmp quantize --weights bits`` (one file per distinct model)."""
    done: dict[Path, Path] = {}
    for model in models:
        if model not in done:
            done[model] = folder / f"{model.stem}-w{bits}.onnx"
            tool("quantize", str(model), "--weights", str(bits), "--out", str(done[model]))
    return [done[m] for m in models]


def accuracy(models: list[Path], task: Any) -> float:
    """Accuracy (%) over every test sample of the devices."""
    hits = total = 0
    for i, model in enumerate(models):
        device = task.device(i)
        hits, total = hits + correct(model, device.test.x, device.test.y), total + len(device.test)
    return 100.0 * hits / max(total, 1)


def dense_bytes(run: Path, task: Any) -> int:
    """Tensor bytes of the dense float32 model of the run's architecture (shapes only)."""
    return model_tensor_bytes(initial_model(load_config(run / "config.yaml"), task.num_classes, task.input_shape))


def figures(model: Path, models: list[Path], task: Any, dense: int) -> dict[str, Any]:
    """Accuracy, bytes, byte reduction and latency of one model (``model``: the run-level file)."""
    size = tensor_bytes(model)
    return {"acc": accuracy(models, task), "bytes": size, "byte_reduction": dense / size} | timing(model, task)


def timing(model: Path, task: Any) -> dict[str, float]:
    """ONNX Runtime's median latency of the model at batch 1 and 64 (one thread)."""
    times = onnx_latency(model, tuple(int(d) for d in task.input_shape))
    return {"latency_b1_ms": times["batch_1"], "latency_b64_ms": times["batch_64"]}


def retime(rows: list[dict[str, Any]], runs: list[dict[str, str]]) -> None:
    """Measure every row's latency again (a machine that was busy while accuracies were measured): the
    run's model as shipped, or its post-training copy made again with the device tool."""
    by_key = {(r["task"], r["variant"] or r["method"], float(r["prune_ratio"]), int(r["seed"])): r for r in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            run = by_key[(row["task"], row["method"], row["prune_ratio"], row["seed"])]
            folder, shipped = Path(run["run_dir"]), Path(run["run_dir"]) / "pruned_model.onnx"
            task = build_task(load_config(folder / "config.yaml").data, int(row["seed"]))
            model = quantized([shipped], row["bits"], Path(tmp))[0] if row["how"] == "ptq" else shipped
            row |= timing(model, task)
            if row["how"] == "admm" and (folder / "pruned_model_float.onnx").is_file():
                row["float_latency_b64_ms"] = timing(folder / "pruned_model_float.onnx", task)["latency_b64_ms"]


def measure(row: dict[str, str], bits: list[int]) -> list[dict[str, Any]]:
    """Every model of one run: as shipped, and each post-training width for a float run."""
    run = Path(row["run_dir"])
    summary = json.loads((run / "summary.json").read_text())
    cfg = load_config(run / "config.yaml")
    task = build_task(cfg.data, cfg.run.seed)
    local = cfg.federation.bn_recalibration == "local"
    label = row["variant"] or row["method"]
    base = {"task": row["task"], "method": label, "prune_ratio": float(row["prune_ratio"]), "seed": int(row["seed"])}
    quant = summary.get("quantization")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense = dense_bytes(run, task)
        models = device_models(run, local, task, folder)
        shipped = quant["bits"] if quant else None
        width = min(shipped.values()) if shipped else 32
        entry = base | {"bits": width, "how": "admm" if quant else "float"}
        entry |= figures(run / "pruned_model.onnx", models, task, dense)
        entry["summary_acc"] = summary["student"]["target_acc"]
        if quant and (run / "pruned_model_float.onnx").is_file():
            entry["float_latency_b64_ms"] = timing(run / "pruned_model_float.onnx", task)["latency_b64_ms"]
        out.append(entry)
        for b in [] if quant else bits:
            runs_model = quantized([run / "pruned_model.onnx"], b, folder)[0]
            device_q = quantized(models, b, folder) if local else [runs_model] * len(models)
            out.append(base | {"bits": b, "how": "ptq"} | figures(runs_model, device_q, task, dense))
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per task, method, ratio and bits, the mean +- std over seeds of accuracy, the byte
    reduction and latency."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["prune_ratio"], r["bits"], r["how"]), []).append(r)
    lines = [
        "| task | method | p | bits | how | seeds | accuracy % | x fewer bytes | b1 ms | b64 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, p, b, how), items in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][3], kv[0][1])):
        accs = [r["acc"] for r in items]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        red = statistics.mean(r["byte_reduction"] for r in items)
        b1 = statistics.mean(r["latency_b1_ms"] for r in items)
        b64 = statistics.mean(r["latency_b64_ms"] for r in items)
        lines.append(
            f"| {task} | {method} | {p:g} | {b} | {how} | {len(items)} | {statistics.mean(accs):.2f}{spread} "
            f"| {red:.1f} | {b1:.3f} | {b64:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], folder: Path) -> None:
    """Per task: mean accuracy against byte reduction, and against latency at batch 1 and 64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task in sorted({r["task"] for r in rows}):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        series: dict[tuple[str, float], dict[int, list[dict[str, Any]]]] = {}
        for r in rows:
            if r["task"] == task:
                series.setdefault((r["method"], r["prune_ratio"]), {}).setdefault(r["bits"], []).append(r)
        for (method, p), by_bits in sorted(series.items()):
            points = sorted(by_bits.items(), reverse=True)
            label = f"{method} p={p:g}"
            for ax, key in zip(axes, ("byte_reduction", "latency_b1_ms", "latency_b64_ms"), strict=True):
                xs = [statistics.mean(r[key] for r in items) for _, items in points]
                ys = [statistics.mean(r["acc"] for r in items) for _, items in points]
                ax.plot(xs, ys, marker="o", label=label)
                for (b, _), x, y in zip(points, xs, ys, strict=True):
                    ax.annotate(str(b), (x, y), fontsize=7)
        for ax, name in zip(axes, ("x fewer bytes than dense float32", "ms, batch 1", "ms, batch 64"), strict=True):
            ax.set_xlabel(name)
            ax.set_ylabel("accuracy % on the devices")
            ax.grid(alpha=0.3)
        axes[0].set_xscale("log")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{task}: accuracy vs bytes and latency (numbers: weight bits)")
        fig.tight_layout()
        fig.savefig(folder / f"{task}_compression.png", dpi=110)
        plt.close(fig)


def main() -> None:
    """Measure every finished run of the study folder not measured yet; write the table and plots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study output folder with runs.csv")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], help="post-training widths of float runs")
    parser.add_argument("--retime", action="store_true", help="measure every measured row's latency again")
    args = parser.parse_args()
    if any(not 2 <= b <= 8 for b in args.bits):
        parser.error(f"--bits: {args.bits}; weight codes take 2 to 8 bits")
    csv_path = args.study / "runs.csv"
    if not csv_path.is_file():
        parser.error(f"{csv_path}: not a study folder (no runs.csv)")
    torch.set_num_threads(1)
    out = args.study / "compression.json"
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.is_file() else []
    measured = {(r["task"], r["method"], r["prune_ratio"], r["seed"]) for r in rows}
    with csv_path.open() as handle:
        runs = list(csv.DictReader(handle))
    for i, run in enumerate(runs, 1):
        key = (run["task"], run["variant"] or run["method"], float(run["prune_ratio"]), int(run["seed"]))
        if key in measured or not (Path(run["run_dir"]) / "summary.json").is_file():
            continue
        print(f"{i}/{len(runs)} {run['run_id']}", flush=True)
        rows += measure(run, args.bits)
        out.write_text(json.dumps(rows, indent=1) + "\n")  # after every run: a cut-short measurement resumes
    if args.retime:
        retime(rows, runs)
        out.write_text(json.dumps(rows, indent=1) + "\n")
    (args.study / "compression.md").write_text(table(rows))
    plot(rows, args.study)
    print(table(rows))


if __name__ == "__main__":
    main()
