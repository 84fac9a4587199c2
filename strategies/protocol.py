"""The FedADMP wire protocol: message types, record keys, error codes and mask packing.

Neutral ground that the server and the clients both import (neither imports the other). Record
keys follow Flower's conventions where Flower has one (``arrays``, ``config``, ``metrics``,
``server-round``, ``num-examples``; message types built on ``MessageType``); state dicts travel
with Flower's own ``ArrayRecord(state_dict)`` / ``.to_torch_state_dict()``.

A server -> device message (``RecordDict``) holds:

- ``arrays``   the global student's state dict (dense in the mask phase, pruned later);
- ``masks``    ``m.<group>``, ``s.<group>``, ``z.<group>`` (and ``u.<group>`` with the global dual)
  in the mask phase; ``keep.<group>`` (the binary merge mask) afterwards, from which a device
  rebuilds the pruned architecture;
- ``teacher``  the teacher's state dict, **only** until the device holds it (the server tracks
  delivery; the device caches it by content hash);
- ``config``   ``server-round``, phase, rho, hyper-parameters and the scenario (JSON).

A device -> server train reply holds ``arrays``, ``masks`` (``m.*``, ``s.*``, and ``u.*`` with
per-client duals) and ``metrics`` (``num-examples``, ``divergence``, ...). A failed handler
replies with an ``Error``: ``TEACHER_MISSING`` when the device lost the teacher (the server sends
it again), Flower's ``CLIENT_APP_RAISED_EXCEPTION`` for anything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from admp.masks import MaskDict

ARRAYS, MASKS, TEACHER, CONFIG, METRICS = "arrays", "masks", "teacher", "config", "metrics"
# self-training aggregates (strategies.selftraining): the fleet's mean prediction with lambda_im and
# im_marginal fleet; class centroids of the student's features with pseudo_labels centroid
QUANT = "quant"  # server -> device (train.kd with quantize.method admm): T = Z - U per quantized weight (Z with
#   quantize.dual per_client: the device subtracts its own U_k)
QUANT_DUAL = "qdual"  # device -> server (quantize.dual per_client): the device's U_k per quantized weight
FLEET = "fleet"  # server -> device: {"marginal": (K,), "centroids": (K, D+1)}, each once it exists
STATS = "stats"  # device -> server: {"mean-prediction": (K,), "feature-sums": (K, D+1), "feature-mass": (K,)}
NUM_EXAMPLES, SERVER_ROUND = "num-examples", "server-round"

# message types: Flower routes "<category>.<action>" to @app.<category>("<action>")
TRAIN_ADMP = MessageType.TRAIN  # local ADMP mask-phase step
TRAIN_KD = f"{MessageType.TRAIN}.kd"  # KD adaptation of a plain (dense or pruned) student
QUERY_BN = f"{MessageType.QUERY}.bnstats"  # BatchNorm input statistics on local data
QUERY_ID = f"{MessageType.QUERY}.identity"  # the device's stable id
QUERY_FISHER = f"{MessageType.QUERY}.gatefisher"  # channel-gate Fisher information on local data (admp.importance)
QUERY_SENSITIVITY = f"{MessageType.QUERY}.quantsens"  # each layer's quantization sensitivity (admp.precision)
EVALUATE = MessageType.EVALUATE  # accuracy on the local labeled test split (evaluation only)

# error codes of a failed reply: Flower's own, plus one of ours above Flower's range
CLIENT_ERROR = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
TEACHER_MISSING = 1001  # the device holds no (valid) copy of the announced teacher
DEVICE_DROPPED = 1002  # simulated fault: the device did not take part in the round (admp_fleet.faults)
DEVICE_LATE = 1003  # simulated fault: the device's reply came after the round's deadline


class TeacherMissing(RuntimeError):
    """The server believes this device holds the teacher, but the device has no valid copy."""


class RecordTypeError(TypeError):
    """A message holds a record, or a metric, of another type than the protocol puts under its key."""


def array_record(content: RecordDict, key: str) -> ArrayRecord:
    """The ArrayRecord under ``key``: KeyError when absent, RecordTypeError when of another record type."""
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise RecordTypeError(f"{key}: expected an ArrayRecord, got a {type(record).__name__}")
    return record


def metric_record(content: RecordDict, key: str = METRICS) -> MetricRecord:
    """The MetricRecord under ``key``: KeyError when absent, RecordTypeError when of another record type."""
    record = content[key]
    if not isinstance(record, MetricRecord):
        raise RecordTypeError(f"{key}: expected a MetricRecord, got a {type(record).__name__}")
    return record


def metric(content: RecordDict, name: str) -> float:
    """The number ``name`` of the message's ``metrics`` record: KeyError when absent, RecordTypeError if no number."""
    value = metric_record(content)[name]
    if not isinstance(value, (int, float)):
        raise RecordTypeError(f"{METRICS}.{name}: expected a number, got a {type(value).__name__}")
    return float(value)


def device_scenario(
    seed: int,
    data: dict[str, Any],
    model: dict[str, Any],
    arch: str,
    num_classes: int,
    input_shape: tuple[int, ...],
) -> dict[str, Any]:
    """The ``scenario`` a device rebuilds its data and model from (sent as JSON in every config):
    the root seed, the ``data`` and ``model`` sections, the resolved architecture, the class count
    and the shape of one sample."""
    return {
        "seed": seed,
        "data": data,
        "model": model,
        "arch": arch,
        "num_classes": num_classes,
        "input_shape": list(input_shape),
    }


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A torch state dict (float and integer buffers as they are) as Flower's ArrayRecord."""
    return ArrayRecord({k: v.detach() for k, v in state.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord back to a torch state dict of writable tensors."""
    return {k: v.clone() for k, v in record.to_torch_state_dict().items()}


def masks_to_record(**named: MaskDict) -> ArrayRecord:
    """Mask dicts under prefixes: ``masks_to_record(m=m, s=s)`` -> keys ``m.<group>``, ``s.<group>``."""
    arrays: dict[str, Array] = {}
    for prefix, masks in named.items():
        for group, tensor in masks.items():
            arrays[f"{prefix}.{group}"] = Array(tensor.detach().cpu().float().contiguous().numpy())
    return ArrayRecord(arrays)


def record_to_masks(record: ArrayRecord, prefix: str) -> MaskDict:
    """The mask dict stored under ``prefix`` (empty if there is none)."""
    head = prefix + "."
    return {
        k[len(head) :]: torch.from_numpy(np.array(v.numpy(), copy=True))
        for k, v in record.items()
        if k.startswith(head)
    }


def message_masks(content: RecordDict, prefix: str) -> MaskDict:
    """``record_to_masks`` of the message's ``masks`` record, empty when it has none."""
    return record_to_masks(array_record(content, MASKS), prefix) if MASKS in content else {}


def make_config(values: dict[str, Any]) -> ConfigRecord:
    """A ConfigRecord; dicts and lists are carried as JSON strings."""
    return ConfigRecord({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in values.items()})


def config_json(config: ConfigRecord, key: str) -> Any:
    """Decode a JSON value written by ``make_config``."""
    return json.loads(str(config[key]))


def metrics_record(values: dict[str, float | int]) -> MetricRecord:
    """A MetricRecord from plain numbers."""
    return MetricRecord({k: float(v) if isinstance(v, float) else int(v) for k, v in values.items()})


def content_bytes(content: RecordDict) -> int:
    """Payload bytes of a message: the arrays it carries (configs and metrics are negligible)."""
    return sum(record.count_bytes() for record in content.array_records.values())


@dataclass(frozen=True)
class Sent:
    """One thing a device sends: the replies it is in, its record and key (``<...>`` is a name pattern),
    its shape, and why the server needs it. Nothing else leaves a device (tests/server/test_declared_keys.py)."""

    messages: tuple[str, ...]
    record: str
    key: str
    shape: str
    why: str

    def matches(self, message: str, record: str, key: str) -> bool:
        """Whether a reply's (message type, record, key) is this declaration."""
        if message not in self.messages or record != self.record:
            return False
        pattern = re.escape(self.key).replace(re.escape("<model state>"), r".+")
        pattern = re.sub(re.escape("<") + r"\w+" + re.escape(">"), r"[\\w.]+", pattern)
        return re.fullmatch(pattern, key) is not None


TRAINING = (str(TRAIN_ADMP), TRAIN_KD)
SECAGG, SECAGG_RECORD = (str(TRAIN_ADMP),), "secaggplus_configs"  # Flower's message type and record for SecAgg+
EVERY = (*TRAINING, QUERY_BN, QUERY_ID, QUERY_FISHER, QUERY_SENSITIVITY, str(EVALUATE))
DEVICE_SENDS: tuple[Sent, ...] = (
    Sent(TRAINING, ARRAYS, "<model state>", "the global model's", "the locally trained student, for FedAvg"),
    Sent((str(TRAIN_ADMP),), MASKS, "m.<group>", "(C_g,)", "relaxed hard mask, averaged for the Z-step"),
    Sent((str(TRAIN_ADMP),), MASKS, "s.<group>", "(C_g,)", "soft mask (the adversary), averaged"),
    Sent((str(TRAIN_ADMP),), MASKS, "u.<group>", "(C_g,)", "the device's dual U_k (dual: per_client only)"),
    Sent((TRAIN_KD,), QUANT_DUAL, "<weight>", "the weight's", "the device's quantization dual U_k (per_client)"),
    Sent(TRAINING, METRICS, NUM_EXAMPLES, "scalar", "FedAvg weight: samples trained on"),
    Sent(TRAINING, METRICS, "divergence", "scalar", "mean KD divergence D on local data (domain gap signal)"),
    Sent(TRAINING, METRICS, "loss", "scalar", "mean local training loss"),
    Sent(TRAINING, METRICS, "epochs", "scalar", "local epochs taken (min_local_steps rule)"),
    Sent(TRAINING, METRICS, "teacher-attached", "scalar", "whether the teacher came with the message"),
    Sent(TRAINING, METRICS, "simulated-delay", "scalar", "injected straggler delay (simulated faults only)"),
    Sent((*TRAINING, str(EVALUATE)), STATS, "mean-prediction", "(K,)", "mean softmax over the device's data: IM"),
    Sent((*TRAINING, str(EVALUATE)), STATS, "feature-sums", "(K, D+1)", "per-class soft feature sums: centroids"),
    Sent((*TRAINING, str(EVALUATE)), STATS, "feature-mass", "(K,)", "per-class soft masses: centroids"),
    Sent((QUERY_BN,), ARRAYS, "mean.<layer>", "(C,)", "E[x] at a BatchNorm input, pooled into fleet BN"),
    Sent((QUERY_BN,), ARRAYS, "sq.<layer>", "(C,)", "E[x^2] at a BatchNorm input, pooled into fleet BN"),
    Sent((QUERY_BN,), METRICS, NUM_EXAMPLES, "scalar", "pooling weight"),
    Sent((QUERY_FISHER,), ARRAYS, "fisher.<group>", "(C_g,)", "sum of squared gate gradients: the fleet's keep set"),
    Sent((QUERY_FISHER,), METRICS, NUM_EXAMPLES, "scalar", "pooling weight"),
    Sent((QUERY_SENSITIVITY,), ARRAYS, "sens.<weight>", "(B,)", "summed KL of each width's projection: mixed bits"),
    Sent((QUERY_SENSITIVITY,), METRICS, NUM_EXAMPLES, "scalar", "pooling weight"),
    Sent((QUERY_ID,), METRICS, "device", "scalar", "the device's stable id (reproducible sampling)"),
    Sent((str(EVALUATE),), METRICS, "accuracy", "scalar", "accuracy on the local labeled test split"),
    Sent((str(EVALUATE),), METRICS, "accuracy-as-exported", "scalar", "the same before the device's BN step"),
    Sent((str(EVALUATE),), METRICS, NUM_EXAMPLES, "scalar", "test samples: the accuracy's weight"),
    Sent((str(EVALUATE),), METRICS, "entropy", "scalar", "mean prediction entropy: label-free score"),
    Sent((str(EVALUATE),), METRICS, "unlabeled", "scalar", "unlabeled samples behind the label-free figures"),
    Sent((str(EVALUATE),), METRICS, "reference-disagreement", "scalar", "% of them where model and teacher differ"),
    Sent(EVERY, METRICS, "seconds", "scalar", "handler wall time"),
    # federation.secure_aggregation: Flower's SecAgg+ stages, all of message type train
    Sent(SECAGG, SECAGG_RECORD, "pk1", "bytes", "set-up: public key for the pairwise masks"),
    Sent(SECAGG, SECAGG_RECORD, "pk2", "bytes", "set-up: public key for encrypting key shares"),
    Sent(SECAGG, SECAGG_RECORD, "dsts", "[node ids]", "key sharing: the neighbours its shares are for"),
    Sent(SECAGG, SECAGG_RECORD, "ctxts", "[bytes]", "key sharing: its key shares, each encrypted to one neighbour"),
    Sent(SECAGG, SECAGG_RECORD, "masked_params", "[bytes]", "the summed entries quantized and masked: only the sum"),
    Sent(SECAGG, SECAGG_RECORD, "nids", "[node ids]", "unmasking: whose shares it returns"),
    Sent(
        SECAGG,
        SECAGG_RECORD,
        "shares",
        "[bytes]",
        "unmasking: shares of live neighbours' masks, dropped ones' keys",
    ),
    Sent(SECAGG, "secure-layout", "names", "[str]", "the names of the summed entries (strategies/secure.py), no value"),
    Sent(SECAGG, "fitres.num_examples", "num_examples", "scalar", "SecAgg+'s weight: num-examples again"),
    Sent(SECAGG, "fitres.status", "code", "scalar", "Flower's legacy status code"),
    Sent(SECAGG, "fitres.status", "message", "str", "Flower's legacy status message (empty)"),
)


def declared(message: str, record: str, key: str) -> bool:
    """Whether a device may send ``key`` under ``record`` in a reply to ``message`` (``DEVICE_SENDS``)."""
    return any(item.matches(message, record, key) for item in DEVICE_SENDS)
