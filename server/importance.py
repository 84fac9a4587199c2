"""The fleet's keep set (``admp.keep_init: fisher``): channel-gate Fisher information measured on the
devices' unlabeled data (``admp.importance``), pooled on the server, in steps of the same share."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from flwr.app import RecordDict

from admp.importance import pooled_fisher, stepped_keep
from admp.masks import MaskDict, group_sizes
from admp_config.sections import AdmpHyper
from server.rounds import RoundRunner, Weights
from strategies import protocol as P
from strategies.aggregation import ReplyError, check_arrays, check_examples
from strategies.base import FleetStrategy
from strategies.robust import combine_statistics

if TYPE_CHECKING:
    from server.session import Session

FisherReply = tuple[MaskDict, int]
MAX_MEAN_FISHER = 1e6  # a per-sample squared log-likelihood gradient far above any real one


def fleet_choice(session: Session, rnd: int) -> Callable[[], MaskDict]:
    """``keep_init: fisher``'s choice for ``server.starts.mask_start``: the fleet's gate-Fisher keep set of
    the teacher, logged (devices counted per step) as a ``keep-choice`` metrics row."""

    def choose() -> MaskDict:
        run = session.run
        weights = run.teacher.state_dict()
        probe = session.kd_strategy(weights, None)
        sizes = group_sizes(run.teacher, run.groups)
        keep, counted = fleet_fisher_keep(session.runner, probe, weights, sizes, run.cfg.admp, rnd)
        run.run_dir.log_metrics({"phase": "keep-choice", "step": rnd, "round": rnd, "devices": min(counted)})
        return keep

    return choose


def fleet_fisher_keep(
    runner: RoundRunner, strategy: FleetStrategy, weights: Weights, sizes: dict[str, int], hp: AdmpHyper, rnd: int
) -> tuple[MaskDict, list[int]]:
    """The keep set at ``hp.prune_ratio`` chosen by the fleet's gate Fisher in ``hp.fisher_steps`` steps
    (``admp.importance.stepped_keep``), each one query to the evaluation devices under the keep set of the
    step before; returns it and the devices counted per step. A step that no device answers is a
    RuntimeError: without target evidence there is nothing to choose by."""
    counted: list[int] = []

    def measure(keep: MaskDict | None) -> MaskDict:
        devices = strategy.sample(rnd, strategy.policy.eval_clients, salt=f"gatefisher-{len(counted)}")
        records = {P.ARRAYS: P.to_record(weights)}
        if keep is not None:
            records[P.MASKS] = P.masks_to_record(m=keep)
        msgs = strategy.messages(rnd, devices, records, {}, P.QUERY_FISHER, with_teacher=False)
        items = strategy.validated(rnd, runner.exchange(msgs), _parse_fisher(sizes, strategy))
        if not items:
            raise RuntimeError(f"keep_init fisher: no device returned gate Fisher sums in step {len(counted) + 1}")
        counted.append(len(items))
        defence = strategy.fleet.defence
        if defence.aggregation == "mean":
            return pooled_fisher(items)
        return combine_statistics([({g: v / n for g, v in sums.items()}, n) for sums, n in items], defence)

    return stepped_keep(measure, hp.prune_ratio, hp.fisher_steps), counted


def _parse_fisher(sizes: dict[str, int], strategy: FleetStrategy) -> Callable[[int, RecordDict], FisherReply]:
    """A reply parser: ``fisher.<group>`` of the model's widths, finite, non-negative, and a per-sample
    mean of sane size, with a bounded example count."""

    def parse(device: int, content: RecordDict) -> FisherReply:
        arrays = P.from_record(P.array_record(content, P.ARRAYS))
        check_arrays(arrays, {f"fisher.{g}": (c,) for g, c in sizes.items()}, "gatefisher", max_abs=math.inf)
        sums = {g: arrays[f"fisher.{g}"] for g in sizes}
        n = check_examples(P.metric(content, P.NUM_EXAMPLES), maximum=strategy.examples_bound(device, "train"))
        for g, v in sums.items():
            if bool((v < 0).any()):
                raise ReplyError(f"gatefisher.fisher.{g}: negative values (a sum of squares)")
            if float(v.max()) > MAX_MEAN_FISHER * n:
                raise ReplyError(f"gatefisher.fisher.{g}: mean {float(v.max()) / n:.3g} above {MAX_MEAN_FISHER:g}")
        return sums, n

    return parse
