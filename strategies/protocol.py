"""The FedADMP wire protocol: message keys and pack/unpack of records, shared by server and clients.

A server -> client message (``RecordDict``) holds:

- ``weights``  ArrayRecord: the global student's state dict (dense in the mask phase, pruned later);
- ``masks``    ArrayRecord: ``m.<group>``, ``s.<group>``, ``z.<group>`` (and ``u.<group>`` for the
  global dual) in the mask phase; ``keep.<group>`` (the binary merge mask) afterwards, from
  which a client rebuilds the pruned architecture;
- ``teacher``  ArrayRecord: the teacher's state dict, **only** in the first message a node gets
  (the server tracks delivery; the client caches it by content hash);
- ``config``   ConfigRecord: phase, round, rho, hyper-parameters and the scenario (JSON).

A client -> server train reply holds ``weights``, ``masks`` (``m.*``, ``s.*`` and ``u.*`` with
per-client duals) and ``metrics`` (``num-examples``, ``divergence``, ...).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from admp.masks import MaskDict

WEIGHTS, MASKS, TEACHER, CONFIG, METRICS = "weights", "masks", "teacher", "config", "metrics"
NUM_EXAMPLES = "num-examples"

# message types (Flower routes "<category>.<action>" to @app.<category>("<action>"))
TRAIN_ADMP = "train"  # local ADMP mask-phase step
TRAIN_KD = "train.kd"  # KD adaptation of a plain (dense or pruned) student
QUERY_BN = "query.bnstats"  # BatchNorm input statistics on local data
QUERY_ID = "query.identity"  # the device's stable id
EVALUATE = "evaluate"  # accuracy on the local labeled test split (evaluation only)


def state_to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """A torch state dict as an ArrayRecord (float and integer buffers kept as they are)."""
    return ArrayRecord({k: Array(v.detach().cpu().contiguous().numpy()) for k, v in state.items()})


def record_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord back to a torch state dict."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


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
    return {k[len(head):]: torch.from_numpy(np.array(v.numpy(), copy=True))
            for k, v in record.items() if k.startswith(head)}


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
