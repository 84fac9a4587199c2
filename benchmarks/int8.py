"""Dense, pruned and pruned-int8 models side by side, as the devices of a finished run get them.

For every device of the run (rebuilt from its ``config.yaml``, as the devices build their data),
through the shipped commands only: the dense teacher and the pruned student, each with the run's
device step (``fedadmp adapt-bn`` on the device's unlabeled data where ``bn_recalibration`` is
``local``, else the exported file), and ``fedadmp quantize`` of the deployed pruned model,
calibrated on the same unlabeled data. ONNX Runtime scores each device's labeled test split.
Reports file size, accuracy (example-weighted over devices) and CPU latency with one thread at
batch 1 and 64 (median over repeated runs on random inputs of the model's shape).

    python benchmarks/int8.py runs/federated-digits-YYYYmmdd-HHMMSS [--out benchmarks/results/int8.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from deployed_accuracy import onnx_correct  # this folder is on the path of a script run from it

from admp.models import example_input
from admp.teacher import initial_model, resolve_arch
from admp_config.schema import load_config
from admp_data.tasks import build_task
from admp_export.bundle import save_bundle
from admp_export.formats import export_onnx
from admp_export.latency import onnx_latency_ms
from simulations.cli import main as fedadmp


def _run(command: list[str]) -> None:
    if fedadmp(command) != 0:
        raise RuntimeError(f"fedadmp {' '.join(command)} failed")


def measure(run: Path, tmp: Path) -> dict[str, object]:
    """Size, accuracy and latency of the dense, pruned and pruned-int8 models over the run's devices."""
    cfg = load_config(run / "config.yaml")
    task = build_task(cfg.data, cfg.run.seed)
    local = cfg.federation.bn_recalibration == "local"
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    teacher.load_state_dict(torch.load(run / "teacher.pt", map_location="cpu", weights_only=True))
    save_bundle(tmp / "dense.pt", resolve_arch(cfg, task.input_shape), task.num_classes, cfg.model.width, None, teacher)
    export_onnx(teacher.eval(), example_input(teacher), tmp / "dense.onnx")  # the teacher as the server holds it
    bundles = {"dense": tmp / "dense.pt", "pruned": run / "pruned_model.pt"}
    exported = {"dense": tmp / "dense.onnx", "pruned": run / "pruned_model.onnx"}
    correct = dict.fromkeys(("dense", "pruned", "pruned-int8"), 0)
    total, files = 0, {}
    for i in range(task.num_devices):
        device = task.device(i)
        data = _npz(tmp, device.train.x)
        for kind in ("dense", "pruned"):
            files[kind] = tmp / f"{kind}{i}.onnx"
            if local:  # the device step, through the shipped command
                _run(["adapt-bn", str(bundles[kind]), "--data", str(data), "--out", str(files[kind])])
            else:
                files[kind] = exported[kind]
        files["pruned-int8"] = tmp / f"int8-{i}.onnx"
        _run(["quantize", str(files["pruned"]), "--data", str(data), "--out", str(files["pruned-int8"])])
        for kind, path in files.items():
            correct[kind] += onnx_correct(path, device.test.x, device.test.y)
        total += len(device.test)
    shape = tuple(task.input_shape)
    return {
        "run": str(run),
        "devices": task.num_devices,
        "test_samples": total,
        "device_step": "adapt-bn" if local else None,
        "models": {
            kind: {
                "bytes": path.stat().st_size,
                "accuracy": 100.0 * correct[kind] / total,
                "latency_ms_batch1": onnx_latency_ms(path, shape, 1, 300),
                "latency_ms_batch64": onnx_latency_ms(path, shape, 64, 50),
            }
            for kind, path in files.items()
        },
    }


def _npz(tmp: Path, x: torch.Tensor) -> Path:
    path = tmp / "local.npz"
    np.savez(path, x=x.numpy())
    return path


def main() -> None:
    """Measure one run directory; print and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.run, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
