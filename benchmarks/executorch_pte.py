"""The exported model as an ExecuTorch program (.pte, XNNPACK) on every device of a run: accuracy, bytes,
latency at batch 1 and 64, beside the run's ONNX model measured the same way.

For every device of a finished run (rebuilt from its ``config.yaml``): the run's bundle, after the
device's BN step where the run infers with per-device BN (``admp_export.bundle.adapt_bn`` on its
unlabeled data, what ``fedadmp adapt-bn`` does), lowered to ExecuTorch (``admp_export.formats.export_pte``)
and run by ExecuTorch's runtime, one sample at a time, on the device's labeled test split. Latency is the
median of 200 calls at batch 1 and 20 at batch 64 (a program per batch size; ExecuTorch programs have a
fixed shape here), one thread, beside ONNX Runtime's on ``pruned_model.onnx``. Needs the ``edge`` extra.
Writes ``executorch.json`` into the run (or ``--out``).

    python benchmarks/executorch_pte.py runs/federated-digits-YYYYmmdd-HHMMSS [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from admp.models import example_input
from admp_config.schema import load_config
from admp_data.tasks import build_task
from admp_export.bundle import adapt_bn, load_bundle
from admp_export.formats import export_pte
from admp_export.latency import median_ms, onnx_latency


def program(path: Path) -> Any:
    """The ``forward`` method of a .pte file, loaded by ExecuTorch's runtime."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def latency_ms(method: Any, x: torch.Tensor, repeats: int) -> float:
    """Median ms of one call of an ExecuTorch method on ``x``."""
    return median_ms(lambda: method.execute([x]), repeats)


def correct(method: Any, x: torch.Tensor, y: torch.Tensor) -> int:
    """Correct predictions of a batch-1 program over (x, y), one sample a call."""
    return sum(int(method.execute([x[i : i + 1]])[0].argmax(1).item() == int(y[i])) for i in range(len(x)))


def measure(run: Path) -> dict[str, Any]:
    """Accuracy over the devices, the .pte's bytes, and both runtimes' latency."""
    cfg = load_config(run / "config.yaml")
    task = build_task(cfg.data, cfg.run.seed)
    local = cfg.federation.bn_recalibration == "local"
    model = load_bundle(run / "pruned_model.pt")
    shape = tuple(example_input(model).shape[1:])
    hits = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shared = export_pte(model, example_input(model), folder / "model.pte")
        size = shared.stat().st_size
        for i in range(task.num_devices):
            device = task.device(i)
            path = shared
            if local:  # the device's own BN statistics, as fedadmp adapt-bn sets them
                path = export_pte(adapt_bn(model, device.train.x), example_input(model), folder / f"device{i}.pte")
            hits += correct(program(path), device.test.x, device.test.y)
            total += len(device.test)
        b1 = latency_ms(program(shared), torch.rand(1, *shape), 200)
        b64_path = export_pte(model, torch.rand(64, *shape), folder / "model64.pte")
        b64 = latency_ms(program(b64_path), torch.rand(64, *shape), 20)
    summary = json.loads((run / "summary.json").read_text())
    return {
        "run": str(run),
        "devices": task.num_devices,
        "device_step": "adapt-bn" if local else None,
        "pte_acc": 100.0 * hits / max(total, 1),
        "summary_target_acc": summary["student"]["target_acc"],
        "pte_bytes": size,
        "onnx_file_bytes": (run / "pruned_model.onnx").stat().st_size,
        "pte_latency_ms": {"batch_1": b1, "batch_64": b64},
        "onnx_latency_ms": onnx_latency(run / "pruned_model.onnx", shape),
    }


def main() -> None:
    """Measure one run directory and write its JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--out", type=Path, help="where to write the report (default: RUN/executorch.json)")
    args = parser.parse_args()
    if not (args.run / "summary.json").is_file():
        parser.error(f"{args.run}: not a finished run (no summary.json)")
    torch.set_num_threads(1)
    result = measure(args.run)
    out = args.out or args.run / "executorch.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
