"""What a device keeps: its data partition, the cached teacher, the student skeleton, its dual.

Caches are per process and content-addressed, so a simulation worker serving many virtual devices
holds one task, one teacher and one skeleton per architecture, whatever the fleet size. Only a
few bytes per device live in Flower's ``Context.state`` (which the simulation copies on every
message): the teacher's hash and, with per-client duals, U_k and the last m_k. A simulation node is
a slot that runs whichever virtual device a message names (``strategies.roster``): there a device's
own dual lives in one file per device under ``FEDADMP_DEVICE_STATE_DIR``, not in the slot's state.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, ConfigScalar, Context, RecordDict
from torch import nn

from admp.masks import MaskDict
from admp.models import build_model, example_input, groups_of
from admp.surgery import prune_model
from admp.teacher import state_hash
from admp.trainer import named_batchnorms
from admp_config.base import parse_section
from admp_config.sections import DataSpec
from admp_data.tasks import CrossDomainTask, Device, build_task
from strategies import protocol as P

_TEACHERS: dict[str, dict[str, torch.Tensor]] = {}  # content hash -> state dict
_TEACHER_MODELS: dict[str, nn.Module] = {}  # content hash -> frozen module built from it
_SKELETONS: dict[str, nn.Module] = {}  # architecture key -> module to deep-copy


def config_record(content: RecordDict, key: str = P.CONFIG) -> ConfigRecord:
    """The ConfigRecord under ``key``: KeyError when absent, RecordTypeError when of another record type."""
    record = content[key]
    if not isinstance(record, ConfigRecord):
        raise P.RecordTypeError(f"{key}: expected a ConfigRecord, got a {type(record).__name__}")
    return record


def _config_scalar(config: ConfigRecord, key: str) -> ConfigScalar:
    value = config[key]
    if isinstance(value, list):
        raise P.RecordTypeError(f"{key}: expected a single value, got a list")
    return value


def config_int(config: ConfigRecord, key: str) -> int:
    """``int`` of the config value ``key``: KeyError when absent, RecordTypeError when a list."""
    return int(_config_scalar(config, key))


def config_float(config: ConfigRecord, key: str) -> float:
    """``float`` of the config value ``key``: KeyError when absent, RecordTypeError when a list."""
    return float(_config_scalar(config, key))


def device_id(context: Context, config: ConfigRecord | None = None) -> int:
    """Stable device id: on a simulation node (``partition-id``), the virtual device the message names
    (``device`` in its config, else the partition id); on a real device its node config's ``device-id``,
    else its node id. A real device never takes the id a message names."""
    simulated = "partition-id" in context.node_config
    if simulated and config is not None and "device" in config:
        return config_int(config, "device")
    for key in ("partition-id", "device-id"):
        if key in context.node_config:
            return int(context.node_config[key])
    return int(context.node_id)


@lru_cache(maxsize=2)
def _task(data_json: str, seed: int) -> CrossDomainTask:
    return build_task(parse_section(DataSpec, json.loads(data_json), "data."), seed)


@lru_cache(maxsize=64)
def _device(data_json: str, seed: int, device: int) -> Device:
    return _task(data_json, seed).device(device)


def load_device(scenario: dict[str, Any], device: int) -> Device:
    """This device's own data (its partition, with its shift mix), built from the scenario.

    The last 64 devices a worker served are kept, so a device sampled again is not rebuilt
    (its shifts recomputed) every round; memory stays bounded whatever the fleet size.
    """
    return _device(json.dumps(scenario["data"], sort_keys=True), int(scenario["seed"]), device)


def teacher_store(context: Context) -> Path:
    """Where this device keeps the teacher on disk: its node config's ``cache-dir``; else
    ``FEDADMP_CACHE_DIR`` (a simulation points its virtual devices at one content-addressed store
    beside its runs); else ``~/.cache/fedadmp/teachers``. Nothing the server sends decides it."""
    if str(context.node_config.get("cache-dir", "")):
        return Path(str(context.node_config["cache-dir"]))
    if os.environ.get("FEDADMP_CACHE_DIR"):
        return Path(os.environ["FEDADMP_CACHE_DIR"])
    return Path.home() / ".cache" / "fedadmp" / "teachers"


def get_teacher(content: RecordDict, context: Context, scenario: dict[str, Any]) -> nn.Module:
    """The frozen teacher: from this message if attached (then cached), else from the caches."""
    config = config_record(content)
    expected = str(config["teacher_hash"])
    store = teacher_store(context) / f"teacher-{expected}.pt"
    if P.TEACHER in content:
        state = P.from_record(P.array_record(content, P.TEACHER))
        if state_hash(state) != expected:
            raise ValueError("teacher arrays do not match the announced hash")
        _TEACHERS[expected] = state
        if not store.exists():
            store.parent.mkdir(parents=True, exist_ok=True)
            tmp = store.with_suffix(f".{os.getpid()}.tmp")
            torch.save(state, tmp)
            os.replace(tmp, store)
        context.state["device"] = ConfigRecord({"teacher_hash": expected})
    elif expected not in _TEACHERS:
        if not store.exists():
            raise P.TeacherMissing(f"teacher-missing: no cached teacher {expected[:12]} on this device")
        state = torch.load(store, map_location="cpu", weights_only=True)
        if state_hash(state) != expected:
            raise P.TeacherMissing(f"teacher-missing: cached teacher {expected[:12]} is corrupt")
        _TEACHERS[expected] = state
    if expected not in _TEACHER_MODELS:
        model = build_student(scenario, None)
        model.load_state_dict(_TEACHERS[expected])
        _TEACHER_MODELS[expected] = model.eval()
    return _TEACHER_MODELS[expected]


def build_student(scenario: dict[str, Any], keep: MaskDict | None) -> nn.Module:
    """A fresh student skeleton: dense, or pruned to the ``keep`` masks (weights to be loaded)."""
    model_spec, shape = scenario["model"], tuple(int(v) for v in scenario["input_shape"])
    key = json.dumps(
        [model_spec, scenario["num_classes"], shape, {g: v.int().tolist() for g, v in sorted((keep or {}).items())}]
    )
    if key not in _SKELETONS:
        dense = build_model(scenario["arch"], int(scenario["num_classes"]), float(model_spec["width"]), shape)
        _SKELETONS[key] = dense if keep is None else prune_model(dense, groups_of(dense), keep, example_input(dense))
    return copy.deepcopy(_SKELETONS[key])


def device_state_file(context: Context, device: int, name: str = "dual") -> Path | None:
    """Where a virtual device keeps state between rounds (``name``: its mask dual, or its quantization
    dual): a file of its own under ``FEDADMP_DEVICE_STATE_DIR`` (set per simulation) when this node is a
    simulation slot; None (the node's Context) on a real device."""
    root = os.environ.get("FEDADMP_DEVICE_STATE_DIR", "")
    return Path(root) / f"{name}-{int(device)}.pt" if root and "partition-id" in context.node_config else None


def read_device_state(
    context: Context, device: int, name: str
) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """What ``keep_device_state`` kept under ``name`` for ``device``: its tensors and numbers, or None
    before the device kept any."""
    path = device_state_file(context, device, name)
    if path is not None:
        if not path.exists():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["tensors"], {k: float(v) for k, v in saved["meta"].items()}
    if name not in context.state:
        return None
    record = config_record(context.state, f"{name}-meta")
    return P.from_record(P.array_record(context.state, name)), {k: config_float(record, k) for k in record}


def keep_device_state(
    context: Context, device: int, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, float]
) -> None:
    """Keep tensors and numbers of ``device`` between rounds under ``name``: in its own file on a
    simulation slot (replaced whole, never half-written), else in the node state (``name``,
    ``name-meta``)."""
    path = device_state_file(context, device, name)
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"tensors": tensors, "meta": meta}, tmp)
        os.replace(tmp, path)
        return
    context.state[name] = P.to_record(tensors)
    context.state[f"{name}-meta"] = ConfigRecord(dict(meta))


def prefixed(**named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensor dicts under prefixes: ``prefixed(u=u, m=m)`` -> keys ``u.<name>``, ``m.<name>``."""
    return {f"{prefix}.{k}": v for prefix, tensors in named.items() for k, v in tensors.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors ``prefixed`` stored under ``prefix``, by their own names."""
    head = prefix + "."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def load_dual(context: Context, device: int, sizes: dict[str, int]) -> tuple[MaskDict, MaskDict | None, int, float]:
    """Per-client dual U_k of ``device``, its last local m_k (None before its first round), the server's
    Z-step count and rho when it was trained."""
    saved = read_device_state(context, device, "dual")
    if saved is None:
        return {g: torch.zeros(c) for g, c in sizes.items()}, None, -1, 0.0
    tensors, meta = saved
    return unprefixed(tensors, "u"), unprefixed(tensors, "m"), int(meta["z_steps"]), meta["rho"]


def save_dual(context: Context, device: int, u: MaskDict, m: MaskDict, z_steps: int, rho: float) -> None:
    """Keep U_k and m_k of ``device`` (a few hundred floats): in its own file on a simulation slot, else in
    the node state."""
    keep_device_state(context, device, "dual", prefixed(u=u, m=m), {"z_steps": float(z_steps), "rho": rho})


@torch.no_grad()
def bn_moments(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Per-channel E[x] and E[x^2] at every BatchNorm input over ``x``: ``mean.<layer>``, ``sq.<layer>``.

    Each batch counts by its number of values per channel (samples x positions), so a short last
    batch weighs what it holds. The model runs in eval mode (its statistics are not touched).
    """
    sums: dict[str, list[torch.Tensor]] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            values = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)  # (C, N * positions)
            first, second = values.sum(dim=1), (values * values).sum(dim=1)
            prev = sums.get(name)
            sums[name] = [first, second] if prev is None else [prev[0] + first, prev[1] + second]
            counts[name] = counts.get(name, 0) + values.shape[1]

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in named_batchnorms(model).items()]
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {f"mean.{k}": v[0] / counts[k] for k, v in sums.items()} | {
        f"sq.{k}": v[1] / counts[k] for k, v in sums.items()
    }
