"""What a resumed run may trust: the checkpoint's digest and schema, and the run directory's files,
all checked before any expensive start (Ray, devices) and before anything in the directory is rewritten.

The digest is SHA-256 over the checkpoint's contents in a canonical order (every tensor's dtype, shape
and bytes; every number and string), stored beside them: a flipped bit in a weight is refused, where
``torch.load`` alone would resume with the damaged value.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from admp.masks import group_sizes
from admp.models import example_input, groups_of
from admp.quantize import quantized_weights
from admp.surgery import prune_model
from admp_config.base import ConfigError
from admp_config.schema import ScenarioConfig

PHASES = ("teacher", "mask", "kd", "quant", "done")
ADMP_ENTRIES = ("m", "s", "z", "u")


def state_digest(state: Any) -> str:
    """SHA-256 of ``state`` (dicts by sorted key, lists in order, tensors by dtype, shape and bytes)."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    else:
        digest.update(repr(value).encode())


def check_schema(cfg: ScenarioConfig, state: dict[str, Any], teacher: nn.Module, path: Path) -> None:
    """ConfigError naming the entry unless the checkpoint's phase, round, student (shapes of the model
    the phase holds, finite), keep set and ADMP state fit the run's config, and the phase holds the kind
    of model the run's strategy exports (pruned, or dense for fedkd)."""
    phase, strategy = state.get("phase"), cfg.federation.strategy
    if phase not in PHASES:
        raise ConfigError(f"{path}: phase {phase!r} is not one of {', '.join(PHASES)}")
    for key in ("round", "rows", "mask_rounds_done"):
        value = state.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path}: {key} {value!r} is not a round count")
    sizes = group_sizes(teacher, groups_of(teacher))
    keep = _keep(state.get("keep") or {}, sizes, path)
    if phase == "mask":
        if strategy != "fedadmp":
            raise ConfigError(f"{path}: a mask-phase checkpoint cannot resume a {strategy} run")
        _check_admp(state.get("admp"), sizes, path)
    if phase in ("kd", "quant") and bool(keep) != (strategy != "fedkd"):
        kind = "pruned" if keep else "dense"
        name = "KD" if phase == "kd" else "quantization"
        raise ConfigError(f"{path}: the {name} phase holds a {kind} student; a {strategy} run does not export one")
    model = prune_model(teacher, groups_of(teacher), keep, example_input(teacher)) if keep else teacher
    _check_tensors(state.get("student"), model.state_dict(), "student", path)
    if phase == "quant":
        _check_quant(cfg, state.get("quant"), model, path)


def _check_quant(cfg: ScenarioConfig, quant: Any, model: nn.Module, path: Path) -> None:
    """The quantization phase's Z and U (the shapes of the model's quantized weights, finite), rho, stage
    and each weight's bits, and the export choice it carries."""
    if cfg.quantize.admm_rounds() == 0:
        raise ConfigError(f"{path}: a quantization-phase checkpoint needs quantize.method admm with bits")
    if not isinstance(quant, dict) or any(
        not isinstance(quant.get(k), dict) for k in ("state", "selection", "bits", "info")
    ):
        raise ConfigError(f"{path}: the quantization phase's state, selection, bits or info is missing")
    state, weights = quant["state"], model.state_dict()
    expected = {name: weights[name] for name in quantized_weights(model)}
    bits = quant["bits"]
    if set(bits) != set(expected) or any(not isinstance(b, int) or not 2 <= b <= 8 for b in bits.values()):
        raise ConfigError(f"{path}: quant.bits does not give every quantized weight 2 to 8 bits")
    for name in ("z", "u"):
        _check_tensors(state.get(name), expected, f"quant.{name}", path)
    rho, stage = state.get("rho"), state.get("stage")
    if not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho <= 0:
        raise ConfigError(f"{path}: quant.rho {rho!r} is not a penalty")
    if not isinstance(stage, int) or not 0 <= stage < len(cfg.quantize.bits):
        raise ConfigError(f"{path}: quant.stage {stage!r} is not a stage of quantize.bits {cfg.quantize.bits}")


def _keep(keep: Any, sizes: dict[str, int], path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(keep, dict) or (keep and set(keep) != set(sizes)):
        raise ConfigError(f"{path}: keep does not name the model's groups {sorted(sizes)}")
    for group, mask in keep.items():
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (sizes[group],):
            raise ConfigError(f"{path}: keep.{group} is not a ({sizes[group]},) tensor")
        if not bool(((mask == 0) | (mask == 1)).all()) or int(mask.sum()) < 1:
            raise ConfigError(f"{path}: keep.{group} is not a binary mask keeping a channel")
    return keep


def _check_admp(admp: Any, sizes: dict[str, int], path: Path) -> None:
    if not isinstance(admp, dict) or any(name not in admp for name in (*ADMP_ENTRIES, "rho", "z_steps")):
        raise ConfigError(f"{path}: the mask phase's ADMP state lacks m, s, z, u, rho or z_steps")
    for name in ADMP_ENTRIES:
        _check_tensors(admp[name], {g: torch.zeros(c) for g, c in sizes.items()}, f"admp.{name}", path)
    rho = admp["rho"]
    if not isinstance(rho, (int, float)) or not math.isfinite(rho) or rho < 0:
        raise ConfigError(f"{path}: admp.rho {rho!r} is not a penalty")


def _check_tensors(given: Any, expected: dict[str, torch.Tensor], what: str, path: Path) -> None:
    if not isinstance(given, dict) or set(given) != set(expected):
        raise ConfigError(f"{path}: {what} does not hold the model's entries")
    for key, reference in expected.items():
        value = given[key]
        if not isinstance(value, torch.Tensor) or value.shape != reference.shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ConfigError(f"{path}: {what}.{key} is {shape}, the run's model has {tuple(reference.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"{path}: {what}.{key} holds NaN or infinite values")


def check_metrics(run_path: Path, rows: int) -> None:
    """ConfigError unless the run's metrics.json is a JSON list with the ``rows`` the checkpoint covers."""
    path = run_path / "metrics.json"
    if not path.is_file():
        if rows:
            raise ConfigError(f"{path}: missing; the checkpoint covers {rows} rows of it")
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, list) or len(data) < rows or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"{path}: not the list of at least {rows} metrics rows the checkpoint covers")
