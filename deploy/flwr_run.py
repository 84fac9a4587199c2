"""``make flwr-run``: a scenario through Flower's own CLI (``flwr run .``) on a simulation SuperLink that
this script starts on a free loopback port and stops afterwards, with everything it started.

    python deploy/flwr_run.py simulations/scenarios/federated_digits.yaml --out-dir runs

The number of simulated SuperNodes is the scenario's fleet size, passed with
``--federation-config num-supernodes=N`` (Flower 1.41 deprecates ``options.`` in its configuration
file); the ServerApp reads the scenario from the run config (``scenario``, ``out-dir``). Exit code:
``flwr run``'s, or 1 when it exited 0 but the run wrote no summary (``flwr run --stream`` exits 0
even when the ServerApp raised).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `deploy` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.simlink import BIN, ROOT, start_superlink


def flower_env(home: Path, ray_tmp: str) -> dict[str, str]:
    """The CLI's and the SuperLink's environment: their own FLWR_HOME, no runtime installs, no
    telemetry, a short RAY_TMPDIR (Ray's socket paths must fit in 107 bytes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_INTERNAL_GRPC_")}
    return env | {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp,
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
    }


def fleet_size(scenario: Path) -> int:
    """The scenario's number of devices (one simulated SuperNode each)."""
    from admp_config.schema import load_config
    from admp_data.tasks import build_task

    cfg = load_config(scenario)
    return build_task(cfg.data, cfg.run.seed).num_devices


def run(scenario: Path, out_dir: Path) -> int:
    """Start a SuperLink, run the scenario with ``flwr run``, stop what was started; the exit code."""
    devices = fleet_size(scenario)
    work = Path(tempfile.mkdtemp(prefix="fedadmp-flwr-"))
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    env = flower_env(work / "flwr-home", ray_tmp)
    (work / "flwr-home").mkdir()
    before = set(out_dir.glob("*/summary.json")) if out_dir.is_dir() else set()
    link, survivors, code = None, [], 1
    try:
        link = start_superlink(work, env)
        (work / "flwr-home" / "config.toml").write_text(
            f'[superlink]\ndefault = "own"\n\n[superlink.own]\naddress = "127.0.0.1:{link.port}"\ninsecure = true\n'
        )
        config = f'scenario="{scenario.resolve()}" out-dir="{out_dir.resolve()}"'
        cmd = [str(BIN / "flwr"), "run", ".", "own", "--run-config", config]
        cmd += ["--federation-config", f"num-supernodes={devices}", "--stream"]
        print(f"SuperLink on 127.0.0.1:{link.port} (simulation, {devices} SuperNodes): {' '.join(cmd)}", flush=True)
        cli = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
        while cli.poll() is None:
            link.record()  # note the SuperLink's descendants' sessions while they live
            time.sleep(1.0)
        code = cli.returncode
    finally:
        if link is not None:
            survivors = link.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    if survivors:
        print(f"flwr_run: processes that did not stop: {survivors}", file=sys.stderr)
    new = set(out_dir.glob("*/summary.json")) - before if out_dir.is_dir() else set()
    if code == 0 and not new:
        print(f"flwr_run: flwr run exited 0 but no run finished; SuperLink logs in {work}", file=sys.stderr)
        return 1
    if code == 0:
        shutil.rmtree(work, ignore_errors=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Command line: a scenario and the folder for its run directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", type=Path, help="scenario YAML (the make-run one by default in the Makefile)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs", help="where the run directory goes")
    args = parser.parse_args(argv)
    return run(args.scenario, args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
