"""The accuracy the shipped artefacts give on the devices, against what a run's summary reports.

For every device of a finished run (rebuilt from its ``config.yaml``, as the devices build their
data): with ``bn_recalibration: local``, the device-side tool itself (``fedadmp adapt-bn`` on the
device's unlabeled data, written to npz) makes the device's ONNX model; otherwise the device runs
``pruned_model.onnx``. ONNX Runtime then scores the device's labeled test split. The accuracy over
every test sample is compared with ``student.target_acc``, the devices' accuracies combined by the
run's aggregation mode as the server combines their claims (``strategies.robust.combine_figure``)
with ``student.target_acc_robust``, and the exported model without the device step with
``student.target_acc_as_exported``. Writes ``deployed_accuracy.json`` into the run.

    python benchmarks/deployed_accuracy.py runs/federated-digits-YYYYmmdd-HHMMSS
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from admp_config.schema import load_config
from admp_data.tasks import build_task
from admp_device.infer import open_session
from simulations.cli import main as fedadmp
from strategies.robust import Defence, combine_figure


def onnx_correct(path: Path, x: torch.Tensor, y: torch.Tensor) -> int:
    """Correct predictions of an ONNX model on (x, y), in ONNX Runtime."""
    session = open_session(path)  # the device runtime's session (an integer artefact's own options)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return int((torch.from_numpy(np.asarray(logits)).argmax(1) == y).sum())


def measure(run: Path) -> dict[str, object]:
    """Deployed and as-exported accuracy over the run's devices, beside the summary's figures."""
    cfg = load_config(run / "config.yaml")
    robust = cfg.federation.robust
    defence = Defence(robust.aggregation, robust.trim_fraction, robust.clip_norm)
    task = build_task(cfg.data, cfg.run.seed)
    local = cfg.federation.bn_recalibration == "local"
    figures: dict[str, list[tuple[float, int]]] = {"deployed": [], "as_exported": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(task.num_devices):
            device = task.device(i)
            model = run / "pruned_model.onnx"
            n = len(device.test)
            figures["as_exported"].append((100.0 * onnx_correct(model, device.test.x, device.test.y) / max(n, 1), n))
            if local:  # the device-side step, through the shipped command
                np.savez(Path(tmp) / "local.npz", x=device.train.x.numpy())
                model = Path(tmp) / f"device{i}.onnx"
                command = ["adapt-bn", str(run / "pruned_model.pt"), "--data", f"{tmp}/local.npz", "--out", str(model)]
                if fedadmp(command) != 0:
                    raise RuntimeError(f"fedadmp adapt-bn failed on device {i}")
            figures["deployed"].append((100.0 * onnx_correct(model, device.test.x, device.test.y) / max(n, 1), n))
    summary = json.loads((run / "summary.json").read_text())["student"]
    pooled = Defence("mean")
    return {
        "run": str(run),
        "devices": task.num_devices,
        "test_samples": sum(n for _, n in figures["deployed"]),
        "device_step": "adapt-bn" if local else None,
        "aggregation": robust.aggregation,
        "deployed_acc": combine_figure(figures["deployed"], pooled),
        "summary_target_acc": summary["target_acc"],
        "deployed_acc_robust": combine_figure(figures["deployed"], defence) if robust.aggregation != "mean" else None,
        "summary_target_acc_robust": summary.get("target_acc_robust"),
        "as_exported_acc": combine_figure(figures["as_exported"], pooled),
        "summary_target_acc_as_exported": summary.get("target_acc_as_exported"),
    }


def main() -> None:
    """Measure one run directory and write its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = measure(args.run)
    (args.run / "deployed_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
