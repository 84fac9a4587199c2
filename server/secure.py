"""A training round under secure aggregation (``federation.secure_aggregation``): Flower's SecAgg+ workflow
on our messages.

``SecAggPlusWorkflow`` is written for the legacy strategy API: it asks a legacy ``Strategy`` for
``FitIns``, runs the four SecAgg+ stages through the grid, and hands the unmasked, example-weighted mean
to ``aggregate_fit``. Here a one-round legacy adapter (``_OneRound``) stands in for that strategy, the
training stage carries our own messages' records instead of ``FitIns`` (``_OurMessages``), and every
exchange goes through ``send_and_wait`` while its replies and bytes are recorded (``_Recorded``). What
comes back: each device's clear reply (metrics, the names of its summed entries; its arrays emptied
by Flower's client mod) and the mean vector, which ``strategies.secure.aggregate_reply`` turns into
one reply for the strategy to validate and aggregate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from admp_config.privacy import SecureSpec
from server.exchange import message_bytes, send_and_wait

STAGES = 4  # set-up, key shares, masked vectors (the training stage), unmasking


@dataclass
class SecureRound:
    """What a secure round gave: the training stage's clear replies, the mean vector (None when the
    protocol halted), and the bytes of every stage."""

    replies: list[Message]
    mean: list[np.ndarray] | None
    bytes_down: int
    bytes_up: int
    stages: int  # stages completed


@dataclass
class _Recorded(Grid):
    """The run's grid with ``send_and_receive`` through ``send_and_wait``; records replies and bytes."""

    grid: Grid
    timeout: float
    replies: list[list[Message]] = field(default_factory=list)  # per exchange
    bytes_down: int = 0
    bytes_up: int = 0

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, wait, record."""
        sent = list(messages)
        self.bytes_down += sum(message_bytes(m) for m in sent)
        replies = send_and_wait(self.grid, sent, self.timeout)
        self.bytes_up += sum(message_bytes(m) for m in replies if not m.has_error())
        self.replies.append(replies)
        return replies

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """The run's grid's."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The run's grid's."""
        return self.grid.pull_messages(message_ids)

    def get_node_ids(self) -> Iterable[int]:
        """The run's grid's."""
        return self.grid.get_node_ids()

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Not used by the workflow."""
        raise NotImplementedError

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        """Not used by the workflow."""
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        """Not used by the workflow."""
        raise NotImplementedError


class _OneRound(Strategy):
    """The legacy strategy the workflow asks: the round's nodes, and a place for the unmasked mean."""

    def __init__(self, nodes: list[int], grid: Grid) -> None:
        self.proxies = [GridClientProxy(node, grid, 0) for node in nodes]
        self.mean: list[np.ndarray] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Not used."""
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Every node of the round (what each trains on is our message, set by ``_OurMessages``)."""
        return [(proxy, FitIns(Parameters([], ""), {})) for proxy in self.proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, bool | bytes | float | int | str]]:
        """Keep the unmasked mean (every result carries the same one)."""
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """No evaluation here."""
        return []

    def aggregate_evaluate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """No evaluation here."""
        return None, {}

    def evaluate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        """No evaluation here."""
        return None


class _OurMessages(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow whose training stage sends our messages' records."""

    def __init__(self, contents: dict[int, RecordDict], spec: SecureSpec, max_weight: float, timeout: float) -> None:
        super().__init__(
            spec.num_shares,
            spec.threshold,
            max_weight=max_weight,
            clipping_range=spec.clipping_range,
            timeout=timeout,
        )
        self.contents = contents

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state) -> bool:  # type: ignore[no-untyped-def]
        """The training stage, with each node's own message records as its instructions."""
        state.nid_to_fitins = {nid: self.contents[nid] for nid in state.nid_to_fitins}
        return bool(super().collect_masked_vectors_stage(grid, context, state))


def secure_exchange(
    grid: Grid, messages: list[Message], spec: SecureSpec, rnd: int, timeout: float, max_weight: float
) -> SecureRound:
    """Run one training round's ``messages`` through SecAgg+ (at least 2 nodes; module docstring);
    ``max_weight``: the largest example count among the round's devices (Flower's quantization)."""
    contents = {m.metadata.dst_node_id: m.content for m in messages}
    recorded = _Recorded(grid, timeout)
    strategy = _OneRound(list(contents), grid)
    state = RecordDict(
        {MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd}), MAIN_PARAMS_RECORD: ArrayRecord()}
    )
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}), strategy=strategy)
    _OurMessages(contents, spec, max_weight, timeout)(recorded, context)
    stages = len(recorded.replies)
    training = recorded.replies[2] if stages > 2 else []
    return SecureRound(training, strategy.mean, recorded.bytes_down, recorded.bytes_up, stages)
