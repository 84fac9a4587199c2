"""What a ClientApp handler reads from its message (``Job``): the config, the scenario, the device and its
data (the scenario's partition, or a real device's own files), the validated hyper-parameters, the
teacher. Kept apart from the handlers (``clients.app``) so they read as the protocol."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from admp.centroids import FeatureSums, student_pseudo_labels
from admp.masks import MaskDict, gated
from admp.models import groups_of
from admp.objective import FleetPrior, mean_prediction, shares_centroids, uses_centroids
from admp.trainer import local_epochs_for
from admp_config.base import parse_section
from admp_config.sections import AdmpHyper
from admp_config.seeding import torch_generator
from admp_data.tasks import Device
from clients.device import (
    build_student,
    config_int,
    config_record,
    device_id,
    get_teacher,
    load_device,
)
from clients.local_data import local_device
from strategies import protocol as P


@dataclass
class Job:
    """What a handler reads from a message: its config, scenario, device and hyper-parameters."""

    config: ConfigRecord
    scenario: dict[str, Any]
    device: int
    hp: AdmpHyper
    node: dict[str, Any]  # the node config: a real device's own data-path, test-path, cache-dir

    @classmethod
    def read(cls, msg: Message, context: Context) -> Job:
        """Decode the message's config (the hyper-parameters are validated like a config file)."""
        config = config_record(msg.content)
        hp = parse_section(AdmpHyper, P.config_json(config, "hp"), "admp.")
        scenario, device = P.config_json(config, "scenario"), device_id(context, config)
        return cls(config, scenario, device, hp, dict(context.node_config))

    def data(self) -> Device:
        """This device's data: its own (node config ``data-path``) on a real device, else its partition
        of the scenario (simulation)."""
        return local_device(self.node, self.scenario, self.device) or load_device(self.scenario, self.device)

    def evaluates_labels(self) -> bool:
        """Whether evaluation may read this device's labels: the run's ``federation.evaluate_labels``
        and the node's own ``evaluate-labels`` (a deployment turns it off for itself) both allow it."""
        node = str(self.node.get("evaluate-labels", "true")).strip().lower() not in ("false", "0", "no", "off")
        return node and bool(self.config.get("labels", True))

    def generator(self, stream: str) -> torch.Generator:
        """This device's RNG for this round, derived from the root seed."""
        return torch_generator(int(self.scenario["seed"]), stream, self.device, config_int(self.config, P.SERVER_ROUND))

    def student(self, msg: Message) -> torch.nn.Module:
        """The global student of the message (pruned to its keep masks, if any)."""
        student = build_student(self.scenario, P.message_masks(msg.content, "keep") or None)
        student.load_state_dict(P.from_record(P.array_record(msg.content, P.ARRAYS)))
        return student

    def local_epochs(self, samples: int) -> int:
        """This round's local epochs: ``local_epochs``, more if needed for ``min_local_steps`` SGD steps
        (at most ``max_local_epochs`` of them)."""
        min_steps = config_int(self.config, "min_local_steps") if "min_local_steps" in self.config else 0
        max_epochs = config_int(self.config, "max_local_epochs") if "max_local_epochs" in self.config else 0
        epochs = config_int(self.config, "local_epochs")
        return local_epochs_for(samples, self.hp.batch_size, epochs, min_steps, max_epochs)

    @property
    def shares_marginal(self) -> bool:
        """IM's diversity uses the fleet's marginal: the device reports its mean prediction."""
        return self.hp.lambda_im > 0 and self.hp.im_marginal == "fleet"

    def prior(self, msg: Message, samples: int) -> FleetPrior | None:
        """The fleet's marginal of the last round (if sent) and this device's share of its samples."""
        fleet = self.fleet(msg)
        if not self.shares_marginal or "marginal" not in fleet:
            return None
        total = max(config_int(self.config, "fleet-examples"), 1)
        return FleetPrior(fleet["marginal"].float(), min(1.0, samples / total))  # (K,)

    @staticmethod
    def fleet(msg: Message) -> dict[str, torch.Tensor]:
        """The message's ``fleet`` record (the fleet's marginal and centroids), empty if not sent."""
        return P.from_record(P.array_record(msg.content, P.FLEET)) if P.FLEET in msg.content else {}

    def pseudo_labels(
        self, msg: Message, student: torch.nn.Module, x: torch.Tensor, m: MaskDict | None = None
    ) -> tuple[torch.Tensor | None, FeatureSums | None]:
        """Centroid pseudo labels (N,) of ``x`` by the received global student (gated by ``m`` in the
        mask phase; BN statistics of this device's data in the mask phase and where devices are
        domains of their own, ``teacher_bn: local``) and the fleet's centroids (this data's own in
        the first round), with this data's feature sums for the reply; (None, None) unless
        ``pseudo_labels: centroid``; with ``centroids: device`` its own centroids, and no sums."""
        if not uses_centroids(self.hp):
            return None, None
        centroids = self.fleet(msg).get("centroids")
        masks = (groups_of(student), m) if m else None
        fleet = centroids.float() if centroids is not None and shares_centroids(self.hp) else None
        labels, sums = student_pseudo_labels(student, x, fleet, masks, local_bn=self.hp.teacher_bn == "local")
        return labels, sums if shares_centroids(self.hp) else None  # device centroids: no sums leave it

    def stats(
        self, student: torch.nn.Module, x: torch.Tensor, sums: FeatureSums | None, m: MaskDict | None = None
    ) -> dict[str, ArrayRecord]:
        """The ``stats`` record of a training reply: the mean prediction (K,) after training (under the
        gates ``m`` in the mask phase) where the marginal is shared, and the feature ``sums``."""
        arrays: dict[str, torch.Tensor] = {}
        if self.shares_marginal:
            with gated(student, groups_of(student), m) if m else nullcontext():
                arrays["mean-prediction"] = mean_prediction(student, x)
        if sums is not None:
            arrays |= {"feature-sums": sums.sums, "feature-mass": sums.mass}
        return {P.STATS: P.to_record(arrays)} if arrays else {}

    def teacher(self, msg: Message, context: Context) -> torch.nn.Module:
        """The frozen teacher, cached first thing: the server counts this device as holding it as
        soon as it was attached, so nothing that can fail may run before it is stored."""
        return get_teacher(msg.content, context, self.scenario)
