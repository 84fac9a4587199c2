"""Mixed precision under ``quantize.budget_bytes`` (or ``budget_reduction``): the fleet's per-layer
sensitivity (one query to the evaluation devices, ``admp.precision``) and the per-layer bits it allocates."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.app import RecordDict

from admp.masks import MaskDict
from admp.precision import allocate, widths_from
from admp.quantize import quantized_weights
from admp_export.integer import model_tensor_bytes
from server.rounds import Weights
from strategies import protocol as P
from strategies.aggregation import ReplyError, check_arrays, check_examples
from strategies.base import FleetStrategy
from strategies.robust import combine_statistics

if TYPE_CHECKING:
    from server.session import Session

SensReply = tuple[dict[str, Any], int]
MAX_MEAN_KL = 1e3  # nats per sample: far above any projection's divergence


def planned_bits(
    session: Session, weights: Weights, keep: MaskDict | None, rnd: int
) -> tuple[dict[str, int], dict[str, Any]]:
    """Each quantized weight's bits under the budget, and what the summary says of the choice."""
    run, q = session.run, session.run.cfg.quantize
    model = run.model(keep)
    model.load_state_dict(weights)
    names = quantized_weights(model)
    widths = widths_from(q.bits[-1])
    sensitivity, devices = fleet_sensitivity(session, weights, keep, names, widths, rnd)
    state = model.state_dict()
    float_bytes = model_tensor_bytes(model)
    fixed = float_bytes - sum(4 * state[n].numel() for n in names)  # biases, folded BN, input normalisation
    sizes = {n: (state[n].numel(), int(state[n].shape[0])) for n in names}
    if q.budget_bytes is not None:
        budget = int(q.budget_bytes)
    else:
        budget = int(model_tensor_bytes(run.teacher) / float(q.budget_reduction or 1.0))
    bits = allocate(sensitivity, sizes, widths, budget, fixed)
    run.run_dir.log_metrics({"phase": "bit-choice", "step": rnd, "round": rnd, "devices": devices})
    info = {"budget_bytes": budget, "widths": widths, "sensitivity": sensitivity, "devices": devices}
    return bits, info


def fleet_sensitivity(
    session: Session, weights: Weights, keep: MaskDict | None, names: list[str], widths: list[int], rnd: int
) -> tuple[dict[str, list[float]], int]:
    """The mean KL per sample of each (layer, width) over the evaluation devices' unlabeled data, combined
    by the fleet's aggregation (sample-weighted under the mean); RuntimeError when no device answers."""
    strategy = session.kd_strategy(weights, keep)
    devices = strategy.sample(rnd, strategy.policy.eval_clients, salt="quantsens")
    records = {P.ARRAYS: P.to_record(weights)} | strategy.evaluation_records()
    config = {"widths": widths, "local-bn": session.runner.local_bn}
    msgs = strategy.messages(rnd, devices, records, config, P.QUERY_SENSITIVITY, with_teacher=False)
    items = strategy.validated(rnd, session.runner.exchange(msgs), _parse(names, len(widths), strategy))
    if not items:
        raise RuntimeError("quantize.budget_bytes: no device returned its layers' sensitivity")
    means = [({n: v / count for n, v in sums.items()}, count) for sums, count in items]
    if strategy.fleet.defence.aggregation == "mean":
        total = sum(count for _, count in items)
        pooled = {n: sum(sums[n] for sums, _ in items) / total for n in names}
    else:
        pooled = combine_statistics(means, strategy.fleet.defence)
    return {n: [float(v) for v in pooled[n]] for n in names}, len(items)


def _parse(names: list[str], count: int, strategy: FleetStrategy) -> Callable[[int, RecordDict], SensReply]:
    """A reply parser: ``sens.<weight>`` of (widths,) for every quantized weight, finite, non-negative and
    of a sane mean per sample, with a bounded example count."""

    def parse(device: int, content: RecordDict) -> SensReply:
        arrays = P.from_record(P.array_record(content, P.ARRAYS))
        check_arrays(arrays, {f"sens.{n}": (count,) for n in names}, "quantsens", max_abs=math.inf)
        n = check_examples(P.metric(content, P.NUM_EXAMPLES), maximum=strategy.examples_bound(device, "train"))
        sums = {name: arrays[f"sens.{name}"] for name in names}
        for name, v in sums.items():
            if bool((v < -1e-6 * n).any()) or float(v.max()) > MAX_MEAN_KL * n:
                raise ReplyError(f"quantsens.sens.{name}: not a sum of {n} divergences (negative or too large)")
        return sums, n

    return parse
