"""``flwr run .`` (Flower's own CLI) runs the same ServerApp/ClientApp on a SuperLink the test owns.

See deploy/simlink.py for how the SuperLink is started on a free port and how exactly the
processes this test started, and no others, are ended.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from deploy.simlink import BIN, ROOT, RUN_TIMEOUT, start_superlink, tail


@pytest.mark.deployment
def test_flwr_run_simulation_on_own_superlink(tmp_path):
    home = tmp_path / "flwr-home"
    home.mkdir()
    out = tmp_path / "runs"
    ray_tmp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's AF_UNIX socket paths must fit in 107 bytes
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
    }
    env |= {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_TMPDIR": ray_tmp,
        "PATH": str(BIN) + os.pathsep + os.environ["PATH"],
    }
    run_config = (
        f'overrides="data.num_devices=4; data.samples_per_device=40; teacher.epochs=2; '
        f"federation.clients_per_round=2; federation.mask_rounds=1; federation.warmup_rounds=0; "
        f"federation.finetune_rounds=1; federation.min_local_steps=0; federation.teacher_rounds=0; "
        f'federation.teacher_fallback=false" out-dir="{out}"'
    )
    cli_out = tmp_path / "flwr-run.out"
    link, survivors = None, []
    try:
        link = start_superlink(tmp_path, env)
        # An explicit address: `flwr` treats the SuperLink as user-managed and starts none itself.
        # `num-supernodes` goes in --federation-config (`options.` in config.toml is deprecated);
        # the simulation default is 2, with which the ServerApp would not find its 4 devices.
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "127.0.0.1:{link.port}"\ninsecure = true\n'
        )
        with cli_out.open("wb") as fh:
            cli = subprocess.Popen(
                [
                    str(BIN / "flwr"),
                    "run",
                    ".",
                    "mine",
                    "--run-config",
                    run_config,
                    "--federation-config",
                    "num-supernodes=4",
                    "--stream",
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            while cli.poll() is None and time.monotonic() < deadline:
                link.record()
                time.sleep(1.0)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        log = "`flwr run` output:\n" + tail(cli_out, chars=6000) + "\n" + link.tail()
        assert cli.returncode == 0, log
        assert link.proc.poll() is None, "the SuperLink died during the run\n" + log
    finally:
        if link is not None:
            survivors = link.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not survivors, f"processes started by this test survived its clean-up: {survivors}"
    assert not (home / "local-superlink").exists(), "flwr started its own local SuperLink"

    (run,) = list(out.iterdir())
    # `flwr run --stream` exits 0 even when the ServerApp raised: show its log if the run is incomplete.
    assert (run / "summary.json").is_file(), "no summary.json\n" + log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["devices"] == 4  # one device per simulated SuperNode
    assert summary["student"]["params"] < summary["teacher"]["params"]
    assert (run / "pruned_model.onnx").stat().st_size > 0
    rows = json.loads((run / "metrics.json").read_text())
    assert rows[-1]["phase"] == "final" and rows[-1]["target_acc"] is not None
