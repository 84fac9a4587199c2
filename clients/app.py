"""The FedADMP ClientApp: local ADMP, KD fine-tuning, BN statistics and evaluation on a device.

The same code runs in Flower's simulation (one virtual device per partition id) and on real
devices (``device-id`` in the node config). Every handler turns an exception into an error reply,
so a failing device drops out of the round instead of stopping it. Target labels are read only by
``evaluate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from admp.admm import rescale_dual
from admp.config import from_dict
from admp.masks import gated, group_sizes
from admp.metrics import accuracy
from admp.seeding import torch_generator
from admp.trainer import AdmpHyper, admp_local_train, kd_finetune, recalibrate_bn
from clients.device import build_student, device_id, get_teacher, load_device, load_dual, save_dual
from strategies import protocol as P

app = ClientApp()
CLIENT_ERROR = 2  # Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def _safely(msg: Message, handler: Callable[[], RecordDict]) -> Message:
    try:
        return Message(handler(), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - any failure becomes an error reply
        return Message(Error(code=CLIENT_ERROR, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


def _setup(msg: Message, context: Context):
    config = msg.content[P.CONFIG]
    scenario = P.config_json(config, "scenario")
    device = device_id(context)
    hp = from_dict(AdmpHyper, P.config_json(config, "hp"), "admp.")
    return config, scenario, device, hp


def _student(msg: Message, scenario: dict) -> torch.nn.Module:
    masks = msg.content[P.MASKS] if P.MASKS in msg.content else None
    keep = P.record_to_masks(masks, "keep") if masks is not None else {}
    student = build_student(scenario, keep or None)
    student.load_state_dict(P.record_to_state(msg.content[P.WEIGHTS]))
    return student


def _training_inputs(msg: Message, context: Context):
    """What both training handlers need: config, scenario, device id, hyper-parameters, teacher,
    student and the device's unlabeled data (its labels are not touched)."""
    config, scenario, device, hp = _setup(msg, context)
    teacher = get_teacher(msg.content, context, scenario)
    data = load_device(scenario, device).train.x
    return config, scenario, device, hp, teacher, _student(msg, scenario), data


@app.train()
def train_admp(msg: Message, context: Context) -> Message:
    """Local ADMP mask-phase step: adversary + (W, m) descent with the ADMM penalty."""
    def handle() -> RecordDict:
        start = time.perf_counter()
        config, scenario, device, hp, teacher, student, data = _training_inputs(msg, context)
        groups = student.channel_groups()
        masks = msg.content[P.MASKS]
        m, s, z = (P.record_to_masks(masks, k) for k in ("m", "s", "z"))
        z_version, rho = int(config["z_version"]), float(config["rho"])
        if str(config["dual"]) == "per_client":
            u, last_m, seen_version, last_rho = load_dual(context, group_sizes(student, groups))
            if last_m is not None and seen_version != z_version:  # a new Z since this device last trained
                u = rescale_dual({g: u[g] + last_m[g] - z[g] for g in u}, last_rho, rho)
        else:
            u = P.record_to_masks(masks, "u")
        gen = torch_generator(int(scenario["seed"]), "client", device, int(config["round"]))
        stats = admp_local_train(student, teacher, groups, m, s, z, u, rho, data,
                                 int(config["local_epochs"]), hp, gen)
        reply_masks = {"m": m, "s": s}
        if str(config["dual"]) == "per_client":
            save_dual(context, u, m, z_version, rho)
            reply_masks["u"] = u
        return RecordDict({
            P.WEIGHTS: P.state_to_record(student.state_dict()),
            P.MASKS: P.masks_to_record(**reply_masks),
            P.METRICS: P.metrics_record({P.NUM_EXAMPLES: len(data), "divergence": stats["divergence"],
                                         "loss": stats["loss"], "seconds": time.perf_counter() - start,
                                         "teacher-attached": int(P.TEACHER in msg.content)}),
        })
    return _safely(msg, handle)


@app.train("kd")
def train_kd(msg: Message, context: Context) -> Message:
    """KD adaptation of a plain student (dense, or pruned to the sent keep masks)."""
    def handle() -> RecordDict:
        start = time.perf_counter()
        config, scenario, device, hp, teacher, student, data = _training_inputs(msg, context)
        gen = torch_generator(int(scenario["seed"]), "client-kd", device, int(config["round"]))
        stats = kd_finetune(student, teacher, data, int(config["local_epochs"]), hp, gen, lr=float(config["lr"]))
        return RecordDict({
            P.WEIGHTS: P.state_to_record(student.state_dict()),
            P.METRICS: P.metrics_record({P.NUM_EXAMPLES: len(data), "divergence": stats["divergence"],
                                         "seconds": time.perf_counter() - start,
                                         "teacher-attached": int(P.TEACHER in msg.content)}),
        })
    return _safely(msg, handle)


@app.query("bnstats")
def bn_statistics(msg: Message, context: Context) -> Message:
    """Per-channel E[x] and E[x^2] at every BatchNorm input, over the local unlabeled data."""
    def handle() -> RecordDict:
        _, scenario, device, _ = _setup(msg, context)
        student = _student(msg, scenario)
        data = load_device(scenario, device).train.x
        sums: dict[str, list[torch.Tensor]] = {}
        hooks = []
        for name, module in student.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                def hook(_mod, inputs, _out, name=name):
                    x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)  # (C, N*spatial)
                    first, second = x.mean(dim=1), (x * x).mean(dim=1)
                    prev = sums.get(name)
                    sums[name] = [first, second] if prev is None else [prev[0] + first, prev[1] + second]
                hooks.append(module.register_forward_hook(hook))
        student.eval()
        batches = 0
        with torch.no_grad():
            for start in range(0, len(data), 256):
                student(data[start:start + 256])
                batches += 1
        for h in hooks:
            h.remove()
        stats = {f"mean.{k}": v[0] / batches for k, v in sums.items()} | {f"sq.{k}": v[1] / batches for k, v in sums.items()}
        return RecordDict({P.WEIGHTS: P.state_to_record(stats),
                           P.METRICS: P.metrics_record({P.NUM_EXAMPLES: len(data)})})
    return _safely(msg, handle)


@app.query("identity")
def identity(msg: Message, context: Context) -> Message:
    """The device's stable id, so the server can sample reproducibly across restarts."""
    def handle() -> RecordDict:
        device = device_id(context)
        return RecordDict({P.METRICS: MetricRecord({"device": device})})
    return _safely(msg, handle)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the global model on this device's labeled test split (evaluation only)."""
    def handle() -> RecordDict:
        config, scenario, device, _ = _setup(msg, context)
        student = _student(msg, scenario)
        local = load_device(scenario, device)
        test = local.test
        if "local_bn" in config and bool(config["local_bn"]):  # personalised BN: unlabeled local data only
            recalibrate_bn(student, local.train.x)
        masks = msg.content[P.MASKS] if P.MASKS in msg.content else None
        m = P.record_to_masks(masks, "m") if masks is not None else {}
        if m:
            with gated(student, student.channel_groups(), m):
                acc = accuracy(student, test.x, test.y)
        else:
            acc = accuracy(student, test.x, test.y)
        return RecordDict({P.METRICS: P.metrics_record({"accuracy": acc, P.NUM_EXAMPLES: len(test)})})
    return _safely(msg, handle)
