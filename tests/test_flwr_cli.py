"""``flwr run .`` (Flower's own CLI) runs the same ServerApp/ClientApp on a local SuperLink."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _superlink_running() -> bool:
    from flwr.cli.local_superlink import _is_local_superlink_started

    return _is_local_superlink_started()


def test_flwr_run_local_simulation(tmp_path):
    started_here = not _superlink_running()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n\n'
                                      '[superlink.local.options]\nnum-supernodes = 4\n')
    out = tmp_path / "runs"
    run_config = (f'overrides="data.num_devices=4; data.samples_per_device=40; teacher.epochs=2; '
                  f'federation.clients_per_round=2; federation.mask_rounds=1; federation.warmup_rounds=0; '
                  f'federation.finetune_rounds=1" out-dir="{out}"')
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                        "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-"), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    try:
        proc = subprocess.run([str(Path(bin_dir) / "flwr"), "run", ".", "local", "--run-config", run_config, "--stream"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    finally:
        if started_here:  # the local SuperLink is detached by design; do not leave ours behind
            subprocess.run(["pkill", "-f", "flower-superlink --insecure --simulation"], check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = list(out.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["devices"] == 4
    assert summary["student"]["params"] < summary["teacher"]["params"]
