"""Fleet-wide server steps outside a strategy's training rounds: device discovery and what the server
knows of its devices (sizes, availability, injected faults), pooled BN statistics."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from admp.trainer import named_batchnorms
from admp_config.federation import FederationSpec
from admp_data.tasks import CrossDomainTask
from admp_fleet.profiles import is_available, read_trace
from server.exchange import send_and_wait
from server.rounds import RoundRunner
from strategies import protocol as P
from strategies.aggregation import check_arrays, check_examples
from strategies.base import FleetStrategy
from strategies.robust import pooled_moments

TensorDict = dict[str, torch.Tensor]


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 60.0) -> list[int]:
    """The grid's node ids, ascending, once ``expected`` nodes are connected (TimeoutError naming how
    many came, after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} devices connected")
        time.sleep(0.1)
    return sorted(nodes)


def discover_devices(grid: Grid, expected: int, timeout: float) -> dict[int, int]:
    """Wait for ``expected`` nodes, then ask each for its stable device id: {device id: node id}.

    A node that cannot identify itself is left out; two nodes claiming one id, or no node
    answering at all, stop the run with a ``RuntimeError`` naming the problem.
    """
    nodes = wait_for_nodes(grid, expected, timeout)
    msgs = [Message(RecordDict({P.CONFIG: P.make_config({})}), dst_node_id=n, message_type=P.QUERY_ID) for n in nodes]
    devices: dict[int, int] = {}
    for reply in send_and_wait(grid, msgs, timeout):
        if reply.has_error():
            continue
        device = int(P.metric(reply.content, "device"))
        if device in devices:
            raise RuntimeError(f"two nodes ({devices[device]}, {reply.metadata.src_node_id}) claim device id {device}")
        devices[device] = reply.metadata.src_node_id
    if not devices:
        raise RuntimeError("no device answered the identity query")
    return devices


Moments = tuple[TensorDict, TensorDict, int]


def _parse_moments(
    expected: dict[str, tuple[int, ...]], strategy: FleetStrategy
) -> Callable[[int, RecordDict], Moments]:
    """A reply parser for per-layer moments: (E[x] per layer, E[x^2] per layer, n)."""

    def parse(device: int, content: RecordDict) -> Moments:
        stats = P.from_record(P.array_record(content, P.ARRAYS))
        check_arrays(stats, expected, "bnstats")
        n = check_examples(P.metric(content, P.NUM_EXAMPLES), maximum=strategy.examples_bound(device, "train"))
        return (
            {k[len("mean.") :]: v for k, v in stats.items() if k.startswith("mean.")},
            {k[len("sq.") :]: v for k, v in stats.items() if k.startswith("sq.")},
            n,
        )

    return parse


def pool_bn_statistics(runner: RoundRunner, strategy: FleetStrategy, model: nn.Module, rnd: int) -> int:
    """Every BatchNorm's statistics pooled over the fleet, one query per BatchNorm layer: devices
    compute a layer's input moments in eval mode, so each query makes the statistics right one layer
    deeper (the first query fixes the first layer, whose inputs do not depend on any statistics; the
    k-th, every layer up to k). A single query left the deeper layers of a ResNet with statistics of
    inputs normalised by the old ones. Returns how many devices counted in the last query."""
    counted = 0
    for _ in named_batchnorms(model):
        counted = recalibrate_from_clients(runner, strategy, model, rnd)
    return counted


def recalibrate_from_clients(runner: RoundRunner, strategy: FleetStrategy, model: nn.Module, rnd: int) -> int:
    """Set every BatchNorm's running mean/var from moments pooled over the devices' data (one query).

    Asks the strategy's evaluation devices (0: all) for per-channel E[x], E[x^2] at each BN
    input under the current model, pools them by the fleet's mode (``pooled_moments``), and
    returns how many devices counted.
    """
    bns = named_batchnorms(model)
    devices = strategy.sample(rnd, strategy.policy.eval_clients, salt="bnstats")
    records = {P.ARRAYS: P.to_record(model.state_dict())} | strategy.evaluation_records()
    msgs = strategy.messages(rnd, devices, records, {}, P.QUERY_BN, with_teacher=False)
    expected: dict[str, tuple[int, ...]] = {
        f"{kind}.{name}": (bn.num_features,) for name, bn in bns.items() for kind in ("mean", "sq")
    }
    items = strategy.validated(rnd, runner.exchange(msgs), _parse_moments(expected, strategy))
    if not items:
        return 0
    means, variances = pooled_moments(items, strategy.fleet.defence)
    with torch.no_grad():
        for name, bn in bns.items():
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError(f"BatchNorm {name} keeps no running statistics to recalibrate")
            bn.running_mean.copy_(means[name])
            bn.running_var.copy_(variances[name])
    return len(items)


def fault_config(fed: FederationSpec) -> dict[str, Any]:
    """The injected faults every training message carries (only when some are on: a simulation setting)."""
    if not fed.faults.active:
        return {}
    return {"faults": fed.faults.model_dump(), "round-timeout": fed.round_timeout}


def availability(fed: FederationSpec, seed: int) -> Callable[[int, int], bool] | None:
    """(round, device) -> whether the device may train in that round (``federation.profiles.availability``)."""
    spec = fed.profiles
    if spec.availability == "always":
        return None
    trace = read_trace(Path(spec.availability_csv)) if spec.availability == "trace" else frozenset()
    return lambda rnd, device: is_available(spec, seed, rnd, device, trace)


def device_sizes(task: CrossDomainTask) -> Callable[[int], tuple[int, int]]:
    """device -> (unlabeled training samples, test samples) it holds: the bound on what its replies
    may claim (computed once per device, when first needed)."""

    @functools.cache
    def sizes(device: int) -> tuple[int, int]:
        train, test = task.device_indices(device)
        return len(train), len(test)

    return sizes
