"""FedADMP: the mask-phase strategy of federated ADMP, and FedKD for plain KD rounds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from admp import admm
from admp.masks import MaskDict, mask_sparsity, ones_masks, zeros_masks
from strategies import protocol as P
from strategies.aggregation import (check_arrays, check_examples, check_range, consensus_z_step,
                                    global_dual_step, weighted_average)
from strategies.base import FleetStrategy, log, tensor_shapes


class FedADMP(FleetStrategy):
    """Federated ADMP mask phase.

    Client contract (message type ``train``): the client receives ``weights`` (dense student),
    ``masks`` with ``m.*``, ``s.*``, ``z.*`` (and ``u.*`` with the global dual), ``teacher`` the
    first time, and ``config`` (round, rho, local_epochs, hp, scenario, dual, z_version). It runs
    ``admp.trainer.admp_local_train`` on its unlabeled data and replies with ``weights`` (same
    keys and shapes), ``masks`` with ``m.*`` in [0, 1], ``s.*`` in [s_min, 1] (and ``u.*`` with
    per-client duals), and ``metrics`` with ``num-examples`` >= 1, ``divergence`` and ``loss``.
    Any other reply is rejected, logged with its device and reason, and not aggregated.

    Aggregation: W, m, s by example weights; after ``warmup_rounds`` every round takes the ADMM
    Z-step and U-step, from the averaged m with one global dual, or from mean(m_k + U_k) with
    per-client duals (consensus ADMM), then the rho schedule.
    """

    def __init__(self, weights: dict[str, torch.Tensor], sizes: dict[str, int], prune_ratio: float,
                 rho: float, rho_gamma: float, rho_max: float, s_min: float, warmup_rounds: int,
                 dual: str, local_epochs: int, prune_ramp: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight_shapes = tensor_shapes(weights)
        self.mask_shapes = {g: (c,) for g, c in sizes.items()}
        self.prune_ratio, self.rho0, self.rho_gamma, self.rho_max = prune_ratio, rho, rho_gamma, rho_max
        self.s_min, self.warmup_rounds, self.dual, self.local_epochs = s_min, warmup_rounds, dual, local_epochs
        self.m, self.s, self.z, self.u = ones_masks(sizes), ones_masks(sizes), ones_masks(sizes), zeros_masks(sizes)
        self.prune_ramp = prune_ramp
        self.rho = 0.0
        self.z_version = 0

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info("FedADMP: p=%s, %s clients/round, dual=%s, warm-up %s rounds, rho %s x%s <= %s",
                 self.prune_ratio, self.clients_per_round, self.dual, self.warmup_rounds,
                 self.rho0, self.rho_gamma, self.rho_max)

    def mask_record(self) -> ArrayRecord:
        """The global masks as sent to clients."""
        if self.dual == "global":
            return P.masks_to_record(m=self.m, s=self.s, z=self.z, u=self.u)
        return P.masks_to_record(m=self.m, s=self.s, z=self.z)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample devices and send W, m, s, Z (U), rho; the teacher only to devices without it."""
        devices = self.sample(server_round, self.clients_per_round)
        records = {P.WEIGHTS: arrays, P.MASKS: self.mask_record()}
        extra = dict(config) | {"phase": "mask", "rho": self.rho, "dual": self.dual,
                                "z_version": self.z_version, "local_epochs": self.local_epochs}
        return self.messages(server_round, devices, records, extra, P.TRAIN_ADMP, with_teacher=True)

    def parse_train_reply(self, content: RecordDict) -> tuple[dict, MaskDict, MaskDict, MaskDict, int, dict]:
        """Validate one reply: keys, shapes, finite values, mask ranges, example count."""
        weights = P.record_to_state(content[P.WEIGHTS])
        check_arrays(weights, self.weight_shapes, "weights")
        masks = content[P.MASKS]
        m, s, u = (P.record_to_masks(masks, k) for k in ("m", "s", "u"))
        check_arrays(m, self.mask_shapes, "masks.m")
        check_arrays(s, self.mask_shapes, "masks.s")
        check_range(m, 0.0, 1.0, "masks.m")
        check_range(s, self.s_min, 1.0, "masks.s")
        if self.dual == "per_client":
            check_arrays(u, self.mask_shapes, "masks.u")
        metrics = content[P.METRICS]
        n = check_examples(float(metrics[P.NUM_EXAMPLES]))
        return weights, m, s, u, n, {k: float(v) for k, v in metrics.items()}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of W, m, s; then the Z/U steps and the rho schedule after the warm-up."""
        parsed = [r for _, r in self.validated(server_round, replies, self.parse_train_reply)]
        if len(parsed) < self.min_replies:
            return None, MetricRecord({"valid-replies": len(parsed)})
        weights = weighted_average([(w, n) for w, _, _, _, n, _ in parsed])
        self.m = weighted_average([(m, n) for _, m, _, _, n, _ in parsed])
        self.s = weighted_average([(s, n) for _, _, s, _, n, _ in parsed])
        if server_round > self.warmup_rounds and self.rho0 > 0:  # rho = 0: no ADMM (plain L1 on m, top-k at the merge)
            ratio = admm.ramped_ratio(self.prune_ratio, self.z_version + 1, self.prune_ramp)
            if self.dual == "global":
                self.z, self.u = global_dual_step(self.m, self.u, ratio)
            else:
                m_plus_u = weighted_average([({g: m[g] + u[g] for g in m}, n) for _, m, _, u, n, _ in parsed])
                self.z = consensus_z_step(m_plus_u, ratio)
            self.z_version += 1
            new_rho = self.rho0 if self.rho == 0 else admm.rho_next(self.rho, self.rho_gamma, self.rho_max)
            self.u = admm.rescale_dual(self.u, self.rho, new_rho)
            self.rho = new_rho
        total = sum(n for *_, n, _ in parsed)
        metrics = {"valid-replies": len(parsed), P.NUM_EXAMPLES: total,
                   "divergence": sum(mt.get("divergence", 0.0) * n for *_, n, mt in parsed) / total,
                   "soft-sparsity": mask_sparsity(self.m), "hard-sparsity": mask_sparsity(self.z),
                   "rho": self.rho, "primal-residual": admm.primal_residual(self.m, self.z)}
        return P.state_to_record(weights), MetricRecord(metrics)

    def evaluation_records(self) -> dict[str, ArrayRecord]:
        """Evaluating clients gate the dense student with the global m (s = 1)."""
        return {P.MASKS: P.masks_to_record(m=self.m)}

    def merge_mask(self) -> MaskDict:
        """The binary keep mask of the merge: a last projection of m + U (global dual) or of m."""
        return admm.z_step(self.m, self.u, self.prune_ratio)

    def state_dict(self) -> dict[str, Any]:
        """Masks, dual, rho and Z version: what resuming the mask phase needs."""
        return {"m": self.m, "s": self.s, "z": self.z, "u": self.u, "rho": self.rho, "z_version": self.z_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()``."""
        self.m, self.s, self.z, self.u = state["m"], state["s"], state["z"], state["u"]
        self.rho, self.z_version = float(state["rho"]), int(state["z_version"])


class FedKD(FleetStrategy):
    """Federated KD adaptation of a plain student (dense, or pruned as given by ``keep``).

    Client contract (message type ``train.kd``): receives ``weights``, optional ``masks`` with
    ``keep.*`` (the pruned architecture), ``teacher`` the first time and ``config``; replies with
    ``weights`` of the same keys and shapes and ``metrics`` (``num-examples``, ``divergence``).
    Used for the fine-tune phase of FedADMP and for the fedkd and naive baselines.
    """

    def __init__(self, weights: dict[str, torch.Tensor], keep: MaskDict | None, local_epochs: int,
                 lr: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight_shapes = tensor_shapes(weights)
        self.keep, self.local_epochs, self.lr = keep, local_epochs, lr

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info("FedKD: %s clients/round, pruned=%s", self.clients_per_round, self.keep is not None)

    def evaluation_records(self) -> dict[str, ArrayRecord]:
        """Evaluating clients rebuild the pruned architecture from the keep masks."""
        return {P.MASKS: P.masks_to_record(keep=self.keep)} if self.keep is not None else {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample devices and send the student (and keep masks); the teacher only once."""
        devices = self.sample(server_round, self.clients_per_round)
        records = {P.WEIGHTS: arrays} | self.evaluation_records()
        extra = dict(config) | {"phase": "kd", "local_epochs": self.local_epochs, "lr": self.lr}
        return self.messages(server_round, devices, records, extra, P.TRAIN_KD, with_teacher=True)

    def parse_train_reply(self, content: RecordDict) -> tuple[dict, int, float]:
        """Validate one reply: weights' keys, shapes, finite values, and the example count."""
        weights = P.record_to_state(content[P.WEIGHTS])
        check_arrays(weights, self.weight_shapes, "weights")
        metrics = content[P.METRICS]
        return weights, check_examples(float(metrics[P.NUM_EXAMPLES])), float(metrics.get("divergence", 0.0))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg of the student's weights."""
        parsed = [r for _, r in self.validated(server_round, replies, self.parse_train_reply)]
        if len(parsed) < self.min_replies:
            return None, MetricRecord({"valid-replies": len(parsed)})
        total = sum(n for _, n, _ in parsed)
        weights = weighted_average([(w, n) for w, n, _ in parsed])
        return P.state_to_record(weights), MetricRecord({
            "valid-replies": len(parsed), P.NUM_EXAMPLES: total,
            "divergence": sum(d * n for _, n, d in parsed) / total})

