"""What the benchmark scripts share: running ``fedadmp simulate`` in a subprocess and finding the run
directory it wrote (the output folder also holds the devices' cache, ``.device_cache``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def simulate_command(sets: list[str], out: Path, name: str, scenario: str = "") -> list[str]:
    """``python -m simulations.cli simulate [SCENARIO] --set ...`` writing ``out/name-*``; the caller's
    settings come first, so the output folder and name always win."""
    cmd = [sys.executable, "-m", "simulations.cli", "simulate", *([scenario] if scenario else [])]
    for item in [*sets, f"run.out_dir={out}", f"run.name={name}"]:
        cmd += ["--set", item]
    return cmd


def run_directory(out: Path, name: str) -> Path:
    """The one finished run directory ``out/name-*``; a clear error when there is none or several."""
    found = [p for p in out.glob(f"{name}-*") if (p / "summary.json").is_file()]
    if len(found) != 1:
        raise RuntimeError(f"expected one finished run {name}-* in {out}, found {[p.name for p in found]}")
    return found[0]


def simulate(sets: list[str], out: Path, name: str, scenario: str = "") -> Path:
    """Run one simulation to the end and return its run directory; its output in the error if it fails."""
    done = subprocess.run(simulate_command(sets, out, name, scenario), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stdout[-2000:] + done.stderr[-2000:]
        raise RuntimeError(f"simulate {name} failed (exit {done.returncode}):\n{tail}")
    return run_directory(out, name)


def write_runtime_report(out: Path, families: Mapping[str, object]) -> None:
    """A latency report with the runtime it was measured in (ONNX Runtime's version, the machine, one thread)."""
    import json
    import platform

    import onnxruntime as ort

    report = {"onnxruntime": ort.__version__, "machine": platform.machine(), "threads": 1, "families": families}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
