"""YAML configuration validated into typed dataclasses.

Every key is checked: an unknown key, a wrong type or an out-of-range value raises ``ConfigError``
naming the full dotted key (e.g. ``admp.prune_ratio``). Defaults are the dataclass defaults, and a
run writes the fully resolved config next to its results.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from admp.data.shifts import IMAGE_SHIFTS, SENSOR_SHIFTS
from admp.data.tasks import DATASETS, DataSpec, devices_are_domains
from admp.models import ARCHITECTURES
from admp.trainer import AdmpHyper


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


@dataclass
class RunSpec:
    """Run identity and reproducibility."""

    name: str = "run"  # run directory prefix
    seed: int = 0  # the root seed: partitions, shifts, init and sampling derive from it
    out_dir: str = "runs"  # parent folder of run directories
    threads: int = 0  # torch CPU threads (0: torch's default)


@dataclass
class ModelSpec:
    """Student/teacher architecture."""

    arch: str = "auto"  # auto (by dataset) | lenet | resnet | cnn1d
    width: float = 1.0  # channel width multiplier


@dataclass
class TeacherSpec:
    """Supervised training of the teacher on labeled source data."""

    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64
    checkpoint: str = ""  # path of a saved teacher state_dict to load instead of training


@dataclass
class ScheduleSpec:
    """Centralized ADMP phases, counted in epochs over the pooled target data."""

    warmup_epochs: int = 3  # mask epochs before the first Z-step (rho = 0, L1 ranks channels)
    mask_epochs: int = 15  # total epochs of the mask phase (warm-up included)
    admm_every: int = 2  # epochs between Z/U steps after the warm-up
    finetune_epochs: int = 8  # KD epochs of the physically pruned model
    finetune_lr: float = 0.01


@dataclass
class FederationSpec:
    """Federated ADMP: fleet sampling, phases in rounds, duals, Ray resources.

    The fleet is the task's devices (``data.num_devices``, or one per subject), one virtual
    SuperNode each.
    """

    strategy: str = "fedadmp"  # fedadmp | fedkd (no pruning) | naive (L1 prune on cloud, then fedkd)
    clients_per_round: int = 5
    mask_rounds: int = 10  # rounds of the mask phase (warm-up included)
    warmup_rounds: int = 2  # rounds before the first Z-step (rho = 0)
    finetune_rounds: int = 3  # KD rounds of the physically pruned global model
    local_epochs: int = 1  # local epochs per round on each client
    dual: str = "global"  # global: server U from averaged m | per_client: U_k kept on each device
    eval_every: int = 1  # federated evaluation every this many rounds (and always at the end)
    eval_clients: int = 0  # clients asked to evaluate (0: every client)
    bn_recalibration: str = "auto"  # global: pool client BN moments into the exported model |
    #   local: global, and each device re-estimates BN statistics on its own unlabeled data before
    #   inference | none: keep the FedAvg'd statistics | auto: local when every device is a domain
    #   of its own (subjects, shifted devices), else global (see admp.data.tasks.devices_are_domains)
    min_replies: int = 1  # a round with fewer valid replies keeps the previous global state
    round_timeout: float = 600.0  # seconds to wait for a round's replies
    client_cpus: float = 1.0  # Ray resources per virtual client
    ray_num_cpus: int = 0  # CPUs given to Ray (0: all)
    ray_address: str = ""  # join an existing Ray cluster at this address ("" : start a local one)
    stop_after_round: int = 0  # pause after this round (0: run to the end); continue with --resume


@dataclass
class ScenarioConfig:
    """Everything a run needs: centralized runs use ``schedule``, federated ones ``federation``."""

    run: RunSpec = field(default_factory=RunSpec)
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    admp: AdmpHyper = field(default_factory=AdmpHyper)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    federation: FederationSpec = field(default_factory=FederationSpec)


# (low, high, low inclusive, high inclusive); None = unbounded
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "run.threads": (0, None, True, True),
    "model.width": (0, 8, False, True),
    "teacher.epochs": (0, None, True, True),
    "teacher.lr": (0, None, False, True),
    "teacher.batch_size": (2, None, True, True),
    "data.num_devices": (1, None, True, True),
    "data.image_size": (8, 512, True, True),
    "data.dirichlet_alpha": (0, None, False, True),
    "data.max_shifts_per_device": (1, 5, True, True),
    "data.severity_min": (1, 5, True, True),
    "data.severity_max": (1, 5, True, True),
    "data.source_val_fraction": (0, 1, False, False),
    "data.target_test_fraction": (0, 1, False, False),
    "data.max_source": (0, None, True, True),
    "data.max_target": (0, None, True, True),
    "data.samples_per_device": (0, None, True, True),
    "admp.prune_ratio": (0, 1, True, False),
    "admp.lr": (0, None, False, True),
    "admp.mask_lr": (0, None, True, True),
    "admp.momentum": (0, 1, True, False),
    "admp.weight_decay": (0, None, True, True),
    "admp.batch_size": (2, None, True, True),
    "admp.tau": (0, None, False, True),
    "admp.lambda_pl": (0, None, True, True),
    "admp.pl_threshold": (0, 1, True, True),
    "admp.lambda_im": (0, None, True, True),
    "admp.l1_m": (0, None, True, True),
    "admp.rho": (0, None, True, True),  # 0: no ADMM (ablation): plain L1 on m, top-k of m at the merge
    "admp.rho_gamma": (1, None, True, True),
    "admp.rho_max": (0, None, False, True),
    "admp.prune_ramp": (0, None, True, True),
    "admp.adv_lr": (0, None, True, True),
    "admp.adv_eps": (0, 1, True, True),
    "admp.s_min": (0, 1, True, True),
    "schedule.warmup_epochs": (0, None, True, True),
    "schedule.mask_epochs": (1, None, True, True),
    "schedule.admm_every": (1, None, True, True),
    "schedule.finetune_epochs": (0, None, True, True),
    "schedule.finetune_lr": (0, None, False, True),
    "federation.clients_per_round": (1, None, True, True),
    "federation.mask_rounds": (0, None, True, True),
    "federation.warmup_rounds": (0, None, True, True),
    "federation.finetune_rounds": (0, None, True, True),
    "federation.local_epochs": (1, None, True, True),
    "federation.eval_every": (1, None, True, True),
    "federation.eval_clients": (0, None, True, True),
    "federation.min_replies": (1, None, True, True),
    "federation.round_timeout": (0, None, False, True),
    "federation.client_cpus": (0, None, False, True),
    "federation.ray_num_cpus": (0, None, True, True),
    "federation.stop_after_round": (0, None, True, True),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ("auto", *ARCHITECTURES),
    "data.dataset": DATASETS,
    "data.partition": ("iid", "dirichlet", "subject"),
    "data.usps_layout": ("resize", "box"),
    "data.shifts": ("auto", "always", "never"),
    "federation.strategy": ("fedadmp", "fedkd", "naive"),
    "federation.dual": ("global", "per_client"),
    "federation.bn_recalibration": ("auto", "global", "local", "none"),
    "admp.teacher_bn": ("auto", "local", "fleet", "source"),
}
LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "data.shift_kinds": tuple(sorted(set(IMAGE_SHIFTS + SENSOR_SHIFTS))),
}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # a programming error, not user input


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix.rstrip(".") or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown key '{prefix}{key}' (known keys in {where}: {', '.join(known)})")
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in data.items()})


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def validate(cfg: Any) -> Any:
    """Range, choice and cross-field checks on a built config; returns it (``auto`` BN modes resolved)."""
    flat = _flatten(cfg)
    for key, (lo, hi, lo_in, hi_in) in RANGES.items():
        if key not in flat:
            continue
        v = flat[key]
        bad_lo = lo is not None and (v < lo if lo_in else v <= lo)
        bad_hi = hi is not None and (v > hi if hi_in else v >= hi)
        if bad_lo or bad_hi:
            interval = f"{'[' if lo_in else '('}{lo}, {hi if hi is not None else 'inf'}{']' if hi_in else ')'}"
            raise ConfigError(f"{key}: {v} is out of range {interval}")
    for key, options in CHOICES.items():
        if key in flat and flat[key] not in options:
            raise ConfigError(f"{key}: {flat[key]!r} is not one of {', '.join(options)}")
    for key, options in LIST_CHOICES.items():
        for item in flat.get(key, []):
            if item not in options:
                raise ConfigError(f"{key}: {item!r} is not one of {', '.join(options)}")
    if flat.get("data.severity_min", 1) > flat.get("data.severity_max", 5):
        raise ConfigError("data.severity_min: must not exceed data.severity_max")
    if flat.get("data.dataset") in ("mnist_usps", "usps_mnist", "hapt", "imagefolder") and not flat.get("data.data_dir"):
        raise ConfigError(f"data.data_dir: required for dataset {flat['data.dataset']!r}")
    if flat.get("data.dataset") == "imagefolder" and not (flat.get("data.source_domain") and flat.get("data.target_domain")):
        raise ConfigError("data.source_domain: imagefolder needs source_domain and target_domain")
    if isinstance(cfg, ScenarioConfig):
        resolve_bn_modes(cfg)
    return cfg


def resolve_bn_modes(cfg: ScenarioConfig) -> None:
    """Replace ``auto`` BatchNorm modes by what the fleet's structure calls for, in place.

    Devices that are domains of their own adapt BN per device (teacher targets and inference:
    ``local``); devices that share one target domain and differ only in label mix adapt BN on the
    whole fleet (teacher: ``fleet``, inference: ``global``). The rule uses no label.
    """
    own_domains = devices_are_domains(cfg.data)
    if cfg.admp.teacher_bn == "auto":
        cfg.admp.teacher_bn = "local" if own_domains else "fleet"
    if cfg.federation.bn_recalibration == "auto":
        cfg.federation.bn_recalibration = "local" if own_domains else "global"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return data


def load_config(path: str | Path, cls: type = ScenarioConfig,
                overrides: list[str] | None = None) -> Any:
    """Read a YAML file (plus ``key=value`` overrides) into a validated ``cls``; errors are ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return validate(from_dict(cls, apply_overrides(data, overrides or [])))


def to_yaml(cfg: Any) -> str:
    """The resolved config (defaults filled in) as YAML."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
