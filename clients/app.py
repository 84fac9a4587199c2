"""The FedADMP ClientApp: local ADMP, KD fine-tuning, BN statistics and evaluation on a device.

The same code runs in Flower's simulation (one virtual device per partition id) and on real
devices (``device-id`` in the node config). One mod wraps every handler: an exception becomes an
error reply (``TEACHER_MISSING`` for a lost teacher, Flower's ``CLIENT_APP_RAISED_EXCEPTION``
otherwise), so a failing device drops out of the round instead of stopping it, and each reply's
metrics get the handler's wall time. Target labels are read only by ``evaluate``.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from admp.centroids import class_sums, features_and_probs
from admp.importance import measured_fisher
from admp.losses import entropy
from admp.masks import gated, group_sizes
from admp.metrics import accuracy
from admp.models import groups_of
from admp.objective import predictions, shares_centroids
from admp.precision import layer_sensitivity
from admp.quantize import quantized_weights
from admp.state import AdmmSettings, AdmpState
from admp.trainer import admp_local_train, kd_finetune, recalibrate_bn, teacher_targets
from admp_data.tasks import Device
from admp_export.bundle import adapt_bn
from clients.device import (
    bn_moments,
    config_float,
    config_int,
    device_id,
    load_dual,
    save_dual,
)
from clients.faults import fault_mod
from clients.job import Job
from clients.privacy import local_dp_mod
from clients.quant_dual import quantization_term
from clients.secure import secure_aggregation
from strategies import protocol as P


def error_reply_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Turn any exception of a handler into an error reply, and time every good reply."""
    start = time.perf_counter()
    try:
        reply = call_next(msg, context)
    except P.TeacherMissing as exc:
        return Message(Error(code=P.TEACHER_MISSING, reason=f"TeacherMissing: {exc}"), reply_to=msg)
    except Exception as exc:  # any failure of a device becomes its error reply, never a crash
        return Message(Error(code=P.CLIENT_ERROR, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
    metrics = reply.content.get(P.METRICS) if not reply.has_error() else None
    if isinstance(metrics, MetricRecord):
        metrics["seconds"] = time.perf_counter() - start
    return reply


# the first mod is outermost; train_kd (below) resolves when a secure KD round calls it
app = ClientApp(mods=[error_reply_mod, fault_mod, local_dp_mod, secure_aggregation(lambda m, c: train_kd(m, c))])
Records = dict[str, ArrayRecord | MetricRecord | ConfigRecord]  # the contents of a reply


def _train_metrics(n: int, stats: dict[str, float], msg: Message) -> MetricRecord:
    """num-examples, the training statistics (divergence, loss) and whether the teacher came along."""
    values = {P.NUM_EXAMPLES: n} | {k: v for k, v in stats.items() if k != "samples"}
    return P.metrics_record(values | {"teacher-attached": int(P.TEACHER in msg.content)})


def _device_state(job: Job, msg: Message, context: Context, sizes: dict[str, int]) -> AdmpState:
    """The ADMP state this device trains against: the global one, with its own dual if per-client."""
    hp, masks = job.hp, P.array_record(msg.content, P.MASKS)
    settings = AdmmSettings.from_hyper(hp)
    m, s, z = (P.record_to_masks(masks, k) for k in ("m", "s", "z"))
    state = AdmpState(
        settings,
        m,
        s,
        z,
        P.record_to_masks(masks, "u"),
        config_float(job.config, "rho"),
        config_int(job.config, "z-steps"),
    )
    if str(job.config["dual"]) == "per_client":
        state.u, last_m, seen_steps, last_rho = load_dual(context, job.device, sizes)
        if last_m is not None and seen_steps != state.z_steps:  # a new Z since this device last trained
            state.advance_client_dual(last_m, last_rho)
    return state


@app.train()
def train_admp(msg: Message, context: Context) -> Message:
    """Local ADMP mask-phase step: adversary + (W, m) descent with the ADMM penalty."""
    job = Job.read(msg, context)
    teacher = job.teacher(msg, context)
    x = job.data().train.x  # unlabeled: the labels are not touched
    student = job.student(msg)
    groups = groups_of(student)
    state = _device_state(job, msg, context, group_sizes(student, groups))
    epochs = job.local_epochs(len(x))  # local_epochs, or more for min_local_steps
    labels, sums = job.pseudo_labels(msg, student, x, state.m)
    stats = admp_local_train(
        student,
        groups,
        state,
        x,
        teacher_targets(teacher, x, job.hp.teacher_bn),
        epochs,
        job.hp,
        job.generator("client"),
        job.prior(msg, len(x)),
        labels,
    )
    reply_masks = {"m": state.m, "s": state.s}
    if str(job.config["dual"]) == "per_client":
        save_dual(context, job.device, state.u, state.m, state.z_steps, state.rho)
        reply_masks["u"] = state.u
    reply: Records = {
        P.ARRAYS: P.to_record(student.state_dict()),
        P.MASKS: P.masks_to_record(**reply_masks),
        P.METRICS: _train_metrics(len(x), stats | {"epochs": epochs}, msg),
    }
    return Message(RecordDict(reply | job.stats(student, x, sums, state.m)), reply_to=msg)


def train_kd(msg: Message, context: Context) -> Message:
    """KD adaptation of a plain student (dense, or pruned to the sent keep masks)."""
    job = Job.read(msg, context)
    teacher = job.teacher(msg, context)
    x = job.data().train.x
    student = job.student(msg)
    epochs = job.local_epochs(len(x))
    labels, sums = job.pseudo_labels(msg, student, x)
    quant = quantization_term(msg, job, context, student)
    stats = kd_finetune(
        student,
        x,
        teacher_targets(teacher, x, job.hp.teacher_bn),
        epochs,
        job.hp,
        job.generator("client-kd"),
        lr=config_float(job.config, "lr"),
        prior=job.prior(msg, len(x)),
        labels=labels,
        penalty=quant.penalty if quant else None,
    )
    reply: Records = {
        P.ARRAYS: P.to_record(student.state_dict()),
        P.METRICS: _train_metrics(len(x), stats | {"epochs": epochs}, msg),
    }
    if quant:
        reply |= quant.finish(context, job.device, student)
    return Message(RecordDict(reply | job.stats(student, x, sums)), reply_to=msg)


app.train("kd")(train_kd)  # registered after its definition: the secure mod above calls it by name


@app.query("bnstats")
def bn_statistics(msg: Message, context: Context) -> Message:
    """Per-channel E[x] and E[x^2] at every BatchNorm input, over the local unlabeled data."""
    job = Job.read(msg, context)
    x = job.data().train.x
    moments = bn_moments(job.student(msg), x)
    return Message(
        RecordDict({P.ARRAYS: P.to_record(moments), P.METRICS: P.metrics_record({P.NUM_EXAMPLES: len(x)})}),
        reply_to=msg,
    )


@app.query("gatefisher")
def gate_fisher_query(msg: Message, context: Context) -> Message:
    """Per-channel sums of squared gate gradients over the local unlabeled data (``admp.importance``):
    the student gated by the message's ``m`` (the keep set of the last step), BN statistics of this
    device's data under those gates, labels drawn from its own predictions (none is read)."""
    job = Job.read(msg, context)
    x = job.data().train.x
    student, m = job.student(msg), P.message_masks(msg.content, "m")
    sums = measured_fisher(student, groups_of(student), x, job.generator("gatefisher"), m or None)
    return Message(
        RecordDict({P.ARRAYS: P.masks_to_record(fisher=sums), P.METRICS: P.metrics_record({P.NUM_EXAMPLES: len(x)})}),
        reply_to=msg,
    )


@app.query("quantsens")
def sensitivity_query(msg: Message, context: Context) -> Message:
    """Each quantized weight's sensitivity on the local unlabeled data (``admp.precision``): summed KL of
    the model's predictions with that layer projected at each of ``config["widths"]`` bits (no label read;
    under per-device BN, with this device's statistics)."""
    job = Job.read(msg, context)
    x = job.data().train.x
    student = job.student(msg)
    if bool(job.config.get("local-bn", False)):
        student = adapt_bn(student, x)
    widths = [int(b) for b in P.config_json(job.config, "widths")]
    sums = layer_sensitivity(student, x, quantized_weights(student), widths)
    arrays = {f"sens.{name}": value for name, value in sums.items()}
    return Message(
        RecordDict({P.ARRAYS: P.to_record(arrays), P.METRICS: P.metrics_record({P.NUM_EXAMPLES: len(x)})}),
        reply_to=msg,
    )


@app.query("identity")
def identity(msg: Message, context: Context) -> Message:
    """The device's stable id, so the server can sample reproducibly across restarts."""
    return Message(RecordDict({P.METRICS: MetricRecord({"device": device_id(context)})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy of the global model on this device's labeled test split (evaluation only), with the
    label-free statistics of its predictions on the device's unlabeled data (``_evaluation_reply``)."""
    job = Job.read(msg, context)
    local = job.data()
    reference = _reference_classes(msg, context, job, local)  # first: an attached teacher is stored
    if not job.evaluates_labels():  # labels off: only the label-free figures leave the device
        local = Device(local.index, local.mix, local.train, local.test.subset(np.arange(0)))
    student = job.student(msg)
    m = P.message_masks(msg.content, "m")
    if m:  # mask phase: the dense student gated by m, BN statistics of this device's data under the gates
        probe = copy.deepcopy(student)  # (training left statistics taken under the adversary's s)
        recalibrate_bn(probe, local.train.x, masks=(groups_of(student), m))
        with gated(probe, groups_of(student), m):
            return _evaluation_reply(msg, job, probe, local, reference=reference)
    if "local-bn" in job.config and bool(job.config["local-bn"]):  # the device step of fedadmp adapt-bn
        as_exported = accuracy(student, local.test.x, local.test.y)
        adapted = adapt_bn(student, local.train.x)  # unlabeled only
        return _evaluation_reply(msg, job, adapted, local, as_exported, reference)
    return _evaluation_reply(msg, job, student, local, reference=reference)


def _reference_classes(msg: Message, context: Context, job: Job, local: Device) -> torch.Tensor | None:
    """The classes the teacher this device holds predicts on its unlabeled data (with the BN statistics
    it distils with), where the server asks how often the evaluated model disagrees with them (the
    export rule's reference, ``config["reference"]``); else None."""
    if not bool(job.config.get("reference", False)) or len(local.train) == 0:
        return None
    return teacher_targets(job.teacher(msg, context), local.train.x, job.hp.teacher_bn).argmax(dim=1)


def _evaluation_reply(
    msg: Message,
    job: Job,
    model: torch.nn.Module,
    local: Device,
    as_exported: float | None = None,
    reference: torch.Tensor | None = None,
) -> Message:
    """An evaluate reply: ``accuracy`` on the test split and its size, ``accuracy-as-exported`` where it
    differs, and, on the unlabeled training data (no label read), the mean per-sample prediction
    entropy ``entropy`` over ``unlabeled`` samples with the mean prediction (K,) in ``stats``: the
    server's label-free score of the model; with ``reference`` (the teacher's classes), the share of
    those samples, in %, on which the model predicts another class (``reference-disagreement``). Asked
    for ``fleet-stats`` (a phase's start), ``stats`` also carries the feature sums of the model, which
    seed the fleet's centroids."""
    values: dict[str, float | int] = {P.NUM_EXAMPLES: len(local.test)}
    if len(local.test):  # labels leave a device only as this aggregate: accuracy (%) over its test samples
        values["accuracy"] = accuracy(model, local.test.x, local.test.y)
        if as_exported is not None:
            values["accuracy-as-exported"] = as_exported
    records: Records = {}
    if len(local.train) > 0:
        probs = predictions(model, local.train.x)  # (N, K)
        values |= {"entropy": float(entropy(probs).mean()), "unlabeled": len(local.train)}
        if reference is not None:
            values["reference-disagreement"] = 100.0 * float((probs.argmax(dim=1) != reference).float().mean())
        arrays = {"mean-prediction": probs.mean(dim=0)}
        if bool(job.config.get("fleet-stats", False)) and shares_centroids(job.hp):
            sums = class_sums(*features_and_probs(model, local.train.x))  # the model as evaluated (BN, gates)
            arrays |= {"feature-sums": sums.sums, "feature-mass": sums.mass}
        records[P.STATS] = P.to_record(arrays)
    return Message(RecordDict(records | {P.METRICS: P.metrics_record(values)}), reply_to=msg)
