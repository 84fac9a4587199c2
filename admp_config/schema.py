"""YAML configuration validated into typed pydantic models.

Every key is checked where it is declared: an unknown key, a wrong type, a value out of its
``Field`` range or outside its choice list (``admp_config.choices``) raises ``ConfigError`` naming the full
dotted key (e.g. ``admp.prune_ratio``). Defaults are the field defaults, and a run writes the fully
resolved config next to its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from admp_config.base import ConfigError, Section, SectionError, parse_section
from admp_config.compression import QuantizeSpec
from admp_config.federation import FederationSpec
from admp_config.sections import AdmpHyper, DataSpec, ModelSpec, RunSpec, ScheduleSpec, TeacherSpec

__all__ = [
    "ScenarioConfig",
    "apply_overrides",
    "config_from_overrides",
    "load_config",
    "resolve_bn_modes",
    "to_yaml",
]


class ScenarioConfig(Section):
    """Everything a run needs: centralized runs use ``schedule``, federated ones ``federation``."""

    run: RunSpec = Field(default_factory=RunSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    admp: AdmpHyper = Field(default_factory=AdmpHyper)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    federation: FederationSpec = Field(default_factory=FederationSpec)
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)

    @model_validator(mode="after")
    def _resolve(self) -> ScenarioConfig:
        """A validated scenario has no ``auto`` left (BN modes, centroids, teacher rounds)."""
        resolve_bn_modes(self)
        return self


def resolve_bn_modes(cfg: ScenarioConfig) -> None:
    """Replace ``auto`` BatchNorm modes by what the fleet's structure calls for, in place.

    Devices that are domains of their own adapt BN per device (teacher targets and inference:
    ``local``); devices that share one target domain and differ only in label mix adapt BN on the
    whole fleet (teacher: ``fleet``, inference: ``global``). The rule uses no label. Under
    ``federation.privacy`` BN is always adapted on each device (pooled moments would be releases
    outside the accounted rounds: ``fleet`` / ``global`` are an error, as is ``keep_init: fisher``) and
    ``admp.trainable`` ``auto`` is ``norm`` (else ``all``). ``admp.merge_recovery`` ``auto`` follows
    ``keep_init`` (its comment says why).
    """
    own_domains = cfg.data.devices_are_domains()
    private = cfg.federation.privacy.active
    if cfg.admp.teacher_bn == "auto":
        cfg.admp.teacher_bn = "local" if own_domains or private else "fleet"
    if cfg.admp.centroids == "auto":
        cfg.admp.centroids = "device" if own_domains else "fleet"
    if cfg.federation.teacher_rounds == "auto":
        cfg.federation.teacher_rounds = 0 if own_domains else 3
    if cfg.federation.bn_recalibration == "auto":
        cfg.federation.bn_recalibration = "local" if own_domains or private else "global"
    if cfg.admp.trainable == "auto":
        cfg.admp.trainable = "norm" if private else "all"
    if cfg.admp.merge_recovery == "auto":
        cfg.admp.merge_recovery = "student" if cfg.admp.keep_init == "none" else "none"
    planned = cfg.admp.latency_budget is not None or bool(cfg.admp.group_ratios)
    if planned and cfg.federation.strategy == "fedtiny":
        raise SectionError("", "admp.latency_budget: fedtiny draws its own layer-wise ratios; plan naive or fedadmp")
    if private and cfg.quantize.mixed:
        raise SectionError(
            "", "quantize.budget_bytes: the fleet's sensitivity query is a release outside the accounted rounds"
        )
    if cfg.quantize.dual == "per_client" and (private or cfg.federation.secure_aggregation.enabled):
        raise SectionError(
            "", "quantize.dual: per_client sends each device's own dual, which privacy and secure aggregation hide"
        )
    if private and cfg.admp.keep_init == "fisher":
        raise SectionError(
            "", "admp.keep_init: fisher releases per-channel statistics of device data outside the accounted rounds"
        )
    pooled = [
        ("admp.teacher_bn", cfg.admp.teacher_bn, "fleet"),
        ("federation.bn_recalibration", cfg.federation.bn_recalibration, "global"),
    ]
    for key, value, pooling in pooled:
        if private and value == pooling:
            raise SectionError(
                "",
                f"{key}: {pooling} pools BN moments over the fleet, which a private run does not release; "
                "use local (each device adapts BN on its own data)",
            )


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
            if node is None:  # an empty section in the YAML file
                node = data[part] = {}
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({yaml_problem(exc)})") from exc
    return data


def config_from_overrides(overrides: list[str]) -> ScenarioConfig:
    """The built-in defaults plus ``key=value`` overrides, validated (a scenario without a file)."""
    return parse_section(ScenarioConfig, apply_overrides({}, overrides))


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML of ``path`` (None for an empty file); a missing, non-UTF-8 or malformed file
    is one ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from exc


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parser's error as one line: the problem and where (line:column, 1-based), without the
    parser's multi-line context and source excerpts."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"{where}{exc.problem or exc.context or 'malformed'}"
    return " ".join(str(exc).split())


def load_config(path: str | Path, overrides: list[str] | None = None) -> ScenarioConfig:
    """Read a YAML file (plus ``key=value`` overrides) into a validated scenario; errors are ConfigError."""
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: empty config file (a scenario has at least one section; see docs/configuration.md)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return parse_section(ScenarioConfig, apply_overrides(data, overrides or []))


def to_yaml(cfg: Section) -> str:
    """The resolved config (defaults filled in) as YAML, keys in field order."""
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)
