"""Fleet-wide server steps outside a strategy's rounds: device discovery, BN recalibration."""

from __future__ import annotations

import time

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from strategies import protocol as P
from strategies.aggregation import ReplyError, bn_statistics, check_examples
from strategies.base import FleetStrategy


def discover_devices(grid: Grid, expected: int, timeout: float) -> dict[int, int]:
    """Wait for ``expected`` nodes, then ask each for its stable device id: {device id: node id}."""
    deadline = time.monotonic() + timeout
    while len(list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(grid.get_node_ids()))} of {expected} devices connected")
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    msgs = [Message(RecordDict({P.CONFIG: P.make_config({})}), dst_node_id=n, message_type=P.QUERY_ID)
            for n in nodes]
    devices: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            continue  # a device that cannot identify itself is left out of the fleet
        device = int(reply.content[P.METRICS]["device"])
        if device in devices:
            raise ValueError(f"two nodes claim device id {device}")
        devices[device] = reply.metadata.src_node_id
    if not devices:
        raise RuntimeError("no device answered the identity query")
    return devices


def recalibrate_from_clients(grid: Grid, strategy: FleetStrategy, model: nn.Module, rnd: int,
                             timeout: float) -> int:
    """Set every BatchNorm's running mean/var from moments pooled over the devices' data.

    Asks the ``eval_clients`` devices (0: all) for per-channel E[x], E[x^2] at each BN input under
    the current global model and pools them by example count. Returns the devices that counted.
    """
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    devices = strategy.sample(rnd, strategy.eval_clients, salt="bnstats")
    records = {P.WEIGHTS: P.state_to_record(model.state_dict())} | strategy.evaluation_records()
    msgs = strategy.messages(rnd, devices, records, {}, P.QUERY_BN, with_teacher=False)
    expected = {f"{kind}.{n}": (bn.num_features,) for n, bn in bns.items() for kind in ("mean", "sq")}

    def parse(content: RecordDict):
        stats = P.record_to_state(content[P.WEIGHTS])
        if set(stats) != set(expected) or any(tuple(stats[k].shape) != v for k, v in expected.items()):
            raise ReplyError("bn statistics do not match the model's BatchNorm layers")
        if not all(bool(torch.isfinite(t).all()) for t in stats.values()):
            raise ReplyError("bn statistics: non-finite values")
        n = check_examples(float(content[P.METRICS][P.NUM_EXAMPLES]))
        return ({k[5:]: v for k, v in stats.items() if k.startswith("mean.")},
                {k[3:]: v for k, v in stats.items() if k.startswith("sq.")}, n)

    items = [r for _, r in strategy.validated(rnd, grid.send_and_receive(msgs, timeout=timeout), parse)]
    if not items:
        return 0
    means, variances = bn_statistics(items)
    with torch.no_grad():
        for name, bn in bns.items():
            bn.running_mean.copy_(means[name])
            bn.running_var.copy_(variances[name])
    return len(items)
