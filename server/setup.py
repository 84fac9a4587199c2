"""A run's set-up, shared by the centralized and the federated run: config, seed, run directory,
task and teacher; plus the checkpoint a federated run writes after every round and resumes from."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from admp.masks import MaskDict, group_sizes
from admp.models import GroupSpec, example_input, groups_of
from admp.surgery import prune_model
from admp.teacher import initial_model, prepare_teacher, resolve_arch
from admp.warmstart import read_keep
from admp_config.base import ConfigError
from admp_config.schema import ScenarioConfig, to_yaml
from admp_config.seeding import seed_everything
from admp_data.tasks import CrossDomainTask, build_task
from server.report import RunDirectory
from server.resume import check_metrics, check_schema, state_digest

CHECKPOINT = "checkpoint.pt"


def track(cfg: ScenarioConfig, run_dir: RunDirectory) -> None:
    """``run.tensorboard``: every metrics row also goes to ``<run dir>/tensorboard`` (server.tracking)."""
    if cfg.run.tensorboard:
        from server.tracking import TensorBoardLog

        run_dir.tracker = TensorBoardLog(run_dir.file("tensorboard"))


@dataclass
class Checkpoint:
    """Where a federated run stands after a round: enough to resume it exactly.

    ``phase`` is ``mask`` (ADMP rounds), ``kd`` (KD rounds of the plain student), ``quant`` (ADMM
    quantization rounds of the chosen student) or ``done``.
    Sampling derives from the seed and the round, so no RNG state is needed. ``teacher_holders``
    says which devices hold which teacher (by content hash), so a resumed run does not send it
    again. Not held: the per-client duals (in each device's node state, so a resumed
    ``dual: per_client`` run restarts them).
    """

    phase: str
    round: int
    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    teacher_info: dict[str, Any]
    rows: int  # metrics rows that this checkpoint covers
    keep: MaskDict = field(default_factory=dict)  # the merge mask once the student is pruned
    admp: dict[str, Any] = field(default_factory=dict)  # AdmpState.state_dict() in the mask phase
    mask_rounds_done: int = 0  # rounds of the mask phase (round numbers continue after it)
    phase_start: dict[str, Any] = field(default_factory=dict)  # KD phase: its start weights and label-free score
    fleet_stats: dict[str, Any] = field(default_factory=dict)  # SharedStats.state_dict(): marginal, centroid sums
    teacher_holders: dict[str, Any] = field(default_factory=dict)  # {"hash": str, "devices": [int, ...]}
    privacy: dict[str, Any] = field(default_factory=dict)  # Privacy.state_dict(): the releases so far
    quant: dict[str, Any] = field(default_factory=dict)  # quant phase: QuantState.state_dict() and the selection

    def save(self, run_dir: RunDirectory) -> None:
        """Write atomically and durably (a temp file, fsync, a rename, fsync of the folder): neither a
        crash nor a power cut leaves half a checkpoint."""
        tmp, final = run_dir.file(CHECKPOINT + ".tmp"), run_dir.file(CHECKPOINT)
        with open(tmp, "wb") as handle:
            torch.save(self.__dict__ | {"digest": state_digest(self.__dict__)}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        folder = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    @staticmethod
    def read(run_path: str | Path) -> dict[str, Any]:
        """A run directory's checkpoint as stored (tensors and primitives only: ``weights_only=True``), its
        digest checked (ConfigError: missing, unreadable, or contents that are not what was written)."""
        path = Path(run_path) / CHECKPOINT
        if not path.is_file():
            raise ConfigError(f"{path}: no checkpoint to resume from")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable, truncated or foreign
            raise ConfigError(
                f"{path}: not a checkpoint this version can resume ({type(exc).__name__}: {exc})"
            ) from exc
        digest = state.pop("digest", None) if isinstance(state, dict) else None
        if digest is None:
            raise ConfigError(f"{path}: not a checkpoint this version can resume (no digest of its contents)")
        if digest != state_digest(state):
            raise ConfigError(f"{path}: damaged: its contents do not match their digest")
        return dict(state)

    @classmethod
    def load(cls, run_path: str | Path) -> Checkpoint:
        """``read``, as a Checkpoint (ConfigError for entries this version does not know)."""
        state = cls.read(run_path)
        try:
            return cls(**state)
        except TypeError as exc:
            path = Path(run_path) / CHECKPOINT
            raise ConfigError(f"{path}: not a checkpoint this version can resume ({exc})") from exc


def check_resumable(cfg: ScenarioConfig, run_path: str | Path, task: CrossDomainTask) -> tuple[Checkpoint, nn.Module]:
    """The checkpoint of ``run_path`` and its teacher, checked before any expensive start (Ray,
    devices) and before anything in the directory is rewritten: it exists, loads, matches its digest,
    its teacher fits the config's model on the task's data, its schema fits the run
    (``server.resume.check_schema``) and the metrics it covers are readable (ConfigError otherwise)."""
    ckpt = Checkpoint.load(run_path)
    teacher = initial_model(cfg, task.num_classes, task.input_shape)
    path = Path(run_path) / CHECKPOINT
    try:
        teacher.load_state_dict(ckpt.teacher)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: does not match the run's config.yaml ({first})") from exc
    check_schema(cfg, ckpt.__dict__, teacher, path)
    check_metrics(Path(run_path), ckpt.rows)
    return ckpt, teacher.eval()


def plan_latency(cfg: ScenarioConfig, teacher: nn.Module, run_dir: RunDirectory, console: Console) -> None:
    """The per-group ratios that meet ``admp.latency_budget`` (``admp_export.latency.search``, on the
    teacher's L1 norms), written into the config (and config.yaml, which a resumed run reads back) and
    the search's record into ``latency_plan.json``."""
    from admp_export.latency import search

    budget = float(cfg.admp.latency_budget or 0.0)
    console.print(f"latency plan: searching per-group ratios for {budget:g} of the dense latency (ONNX Runtime)")
    plan = search(teacher, groups_of(teacher), budget)
    cfg.admp.group_ratios = plan.ratios
    run_dir.write_text("config.yaml", to_yaml(cfg))
    run_dir.write_json("latency_plan.json", plan.summary())
    console.print(
        f"latency plan: keep {plan.counts}, {plan.measured_ms[0]:.3f} / {plan.measured_ms[1]:.2f} ms (b1 / b64)"
    )


def check_group_ratios(cfg: ScenarioConfig, task: CrossDomainTask) -> None:
    """ConfigError unless ``admp.group_ratios`` (when set) names exactly the model's channel groups."""
    if not cfg.admp.group_ratios:
        return
    groups = sorted(groups_of(initial_model(cfg, task.num_classes, task.input_shape)))
    if sorted(cfg.admp.group_ratios) != groups:
        raise ConfigError(f"admp.group_ratios: names {sorted(cfg.admp.group_ratios)}; the model's groups are {groups}")


def given_keep(cfg: ScenarioConfig, task: CrossDomainTask) -> MaskDict | None:
    """The keep set of ``admp.keep_path`` under ``keep_init: file`` (checked against the run's model and
    ratio: ``DataError`` naming the file), else None."""
    if cfg.admp.keep_init != "file":
        return None
    model = initial_model(cfg, task.num_classes, task.input_shape)
    return read_keep(cfg.admp.keep_path, group_sizes(model, groups_of(model)), cfg.admp.ratio())


@dataclass
class RunSetup:
    """Config, task, architecture, teacher and run directory of one run (new or resumed)."""

    cfg: ScenarioConfig
    task: CrossDomainTask
    arch: str
    teacher: nn.Module
    teacher_info: dict[str, Any]
    run_dir: RunDirectory
    console: Console
    checkpoint: Checkpoint | None = None  # set when resuming
    given_keep: MaskDict | None = None  # admp.keep_init file: the keep set read from admp.keep_path
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(
        cls,
        cfg: ScenarioConfig,
        resume: str | Path | None = None,
        console: Console | None = None,
        federated: bool = False,
    ) -> RunSetup:
        """Seed everything, build the task, and either start a run directory (config written,
        teacher trained or loaded and saved) or reopen ``resume`` with its checkpoint's teacher.
        ``federated``: the federation's settings are checked against the fleet first."""
        seed_everything(cfg.run.seed)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        task = build_task(cfg.data, cfg.run.seed)  # the server reads only the labeled source
        if federated:
            cfg.federation.check_fleet(task.num_devices)
        check_group_ratios(cfg, task)
        given = given_keep(cfg, task)  # a bad keep file fails here, before the teacher trains
        console = console or Console()
        if resume:
            ckpt, teacher = check_resumable(cfg, resume, task)
            run_dir = RunDirectory.reopen(resume, keep_rows=ckpt.rows)
            track(cfg, run_dir)
            arch = resolve_arch(cfg, task.input_shape)
            return cls(cfg, task, arch, teacher, dict(ckpt.teacher_info), run_dir, console, ckpt, given)
        run_dir = RunDirectory(cfg.run.out_dir, cfg.run.name)
        run_dir.write_text("config.yaml", to_yaml(cfg))
        track(cfg, run_dir)
        teacher, info = prepare_teacher(cfg, task)
        torch.save(teacher.state_dict(), run_dir.file("teacher.pt"))
        if cfg.admp.latency_budget is not None and not cfg.admp.group_ratios:
            plan_latency(cfg, teacher, run_dir, console)
        arch = resolve_arch(cfg, task.input_shape)
        return cls(cfg, task, arch, teacher, info, run_dir, console, given_keep=given)

    @property
    def groups(self) -> GroupSpec:
        """The channel groups of the architecture."""
        return groups_of(self.teacher)

    def model(self, keep: MaskDict | None = None) -> nn.Module:
        """A fresh model of the run's architecture: dense, or pruned to ``keep`` (weights to load)."""
        model = initial_model(self.cfg, self.task.num_classes, self.task.input_shape)
        if keep:
            model = prune_model(model, self.groups, keep, example_input(model))
        return model

    def teacher_rounds_played(self) -> int:
        """The rounds of the teacher's self-training, which every later round number follows: as the phase
        played them (a weak teacher's rounds and the phase's extension are decided during the run), else
        as configured."""
        return int(self.teacher_info.get("self_training_rounds", self.cfg.federation.self_training_rounds()))

    def save_checkpoint(self, phase: str, rnd: int, student: dict[str, torch.Tensor], **extra: Any) -> None:
        """Checkpoint after round ``rnd`` (see ``Checkpoint``)."""
        Checkpoint(
            phase, rnd, student, self.teacher.state_dict(), self.teacher_info, len(self.run_dir.rows), **extra
        ).save(self.run_dir)

    def stop_requested(self, rnd: int) -> bool:
        """True after the round of ``federation.stop_after_round`` (the run pauses, resumable)."""
        return 0 < self.cfg.federation.stop_after_round <= rnd

    def seconds(self) -> float:
        """Wall-clock seconds since the set-up started."""
        return round(time.perf_counter() - self.started, 2)
