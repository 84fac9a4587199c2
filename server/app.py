"""The FedADMP ServerApp (Flower Message API).

``app`` is the component named in ``pyproject.toml`` for ``flwr run .``: it reads the run config
keys ``scenario`` (absolute path of a scenario YAML; empty = built-in defaults), ``overrides``
(``key=value`` pairs separated by ``;``), ``resume`` (a run directory) and ``out-dir`` (absolute;
the app runs from a copy, so relative outputs would be lost). ``make_server_app`` builds the same
app around an already-loaded config, which is what ``fedadmp simulate`` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from admp_config.schema import ScenarioConfig, config_from_overrides, load_config
from server.finish import finish
from server.phases import adapt_teacher, discover, export_model, finetune_phase, mask_phase
from server.quantize_phase import quantize_phase
from server.setup import RunSetup
from server.starts import Start, baseline_start
from server.teacher_phase import self_train_teacher


def config_from_run_config(run_config: Mapping[str, object]) -> ScenarioConfig:
    """Scenario from Flower's run config (see module docstring)."""
    overrides = [item.strip() for item in str(run_config.get("overrides", "")).split(";") if item.strip()]
    scenario = str(run_config.get("scenario", "")).strip()
    cfg = load_config(scenario, overrides=overrides) if scenario else config_from_overrides(overrides)
    out_dir = str(run_config.get("out-dir", "")).strip()
    if out_dir:
        cfg.run.out_dir = out_dir
    if not Path(cfg.run.out_dir).is_absolute():
        cfg.run.out_dir = str(Path.home() / "fedadmp-runs" / cfg.run.out_dir)
    return cfg


def run_federated(grid: Grid, cfg: ScenarioConfig, resume: str | None = None, virtual: bool = False) -> Path | None:
    """Every phase of a federated run (or what is left of a resumed one) through ``grid``; ``virtual``:
    the grid's nodes are a simulation's slots for ``data.num_devices`` virtual devices. Returns the run
    directory once the run has finished (None when it paused)."""
    run = RunSetup.open(cfg, resume, federated=True)  # config, seed, run directory, teacher (or the checkpoint's)
    if run.checkpoint is not None and run.checkpoint.phase == "done":
        run.console.print(f"run already finished: {run.run_dir.path}")
        return run.run_dir.path
    session = discover(grid, run, virtual)  # device ids, the teacher's delivery, the round runner
    adapt_teacher(session)  # target BN statistics of the KD teacher, its zero-training accuracy
    start: Start | None = None
    if self_train_teacher(session):  # the dense teacher adapts itself first (server.teacher_phase)
        start = mask_phase(session) if cfg.federation.strategy == "fedadmp" else baseline_start(session)
    chosen = finetune_phase(session, start) if start is not None else None  # the student the rule exports
    quantized = quantize_phase(session, *chosen) if chosen is not None else None  # integer weights, if asked
    if chosen is None or quantized is None:
        run.console.print(f"paused; continue with: fedadmp simulate --resume {run.run_dir.path}")
        return None
    weights, quantization = quantized
    keep = chosen[1]
    finish(session, export_model(session, weights, keep), keep, quantization)  # evaluation, export, summary
    return run.run_dir.path


def make_server_app(
    cfg: ScenarioConfig | None = None,
    resume: str | None = None,
    virtual: bool = False,
    finished: Callable[[Path], None] | None = None,
) -> ServerApp:
    """A ServerApp running ``cfg`` (or the config in Flower's run config when ``cfg`` is None); ``virtual``:
    on a simulation's nodes as slots for its virtual devices (``fedadmp simulate``); ``finished`` is
    called with the run directory when the run has finished (the simulation's ServerApp runs in the
    caller's process, so this is how ``run_federated_simulation`` returns the summary)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = cfg if cfg is not None else config_from_run_config(dict(context.run_config))
        resume_dir = resume or str(context.run_config.get("resume", "")).strip() or None
        done = run_federated(grid, run_cfg, resume_dir, virtual)
        if done is not None and finished is not None:
            finished(done)

    return server


app = make_server_app()

__all__ = ["app", "config_from_run_config", "make_server_app"]
