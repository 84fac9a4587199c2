"""What the fleet aggregates for federated self-training: the mean prediction and the class centroids.

Each training reply may carry a ``stats`` record: the device's mean softmax (K,) after training,
for IM's diversity term (``admp.lambda_im`` with ``im_marginal: fleet``), and the per-class soft
sums of its normalised features (K, D+1) with their masses (K,), for the centroid pseudo labels
(``admp.pseudo_labels: centroid``). The server validates them like any reply, adds them up and
sends the fleet's marginal and centroids back with the next training round (the ``fleet``
record). Both are aggregates over a device's whole data: no sample, feature or label leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecordValues, RecordDict

from admp.centroids import FeatureSums, add_sums
from admp.losses import entropy
from admp_privacy.dp import project_distribution
from strategies import protocol as P
from strategies.aggregation import ReplyError, check_arrays, check_examples, check_range, weighted_average
from strategies.robust import Defence, combine_statistics


@dataclass
class DeviceStats:
    """One reply's validated ``stats``: the mean prediction (K,) and the feature sums, where shared."""

    mean_prediction: torch.Tensor | None = None
    sums: FeatureSums | None = None


def _check_distribution(stats: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """``stats[key]`` as a probability vector: values in [0, 1] summing to 1 (ReplyError otherwise)."""
    p = stats[key].float()
    check_range({key: p}, 0.0, 1.0, "stats")
    if abs(float(p.sum()) - 1.0) > 1e-3:
        raise ReplyError(f"stats.{key}: sums to {float(p.sum()):.4g}, not 1")
    return p


def _check_mass(mass: torch.Tensor, n: int) -> None:
    """Soft masses are >= 0 and add up to the device's example count (each softmax sums to 1)."""
    if float(mass.min()) < -1e-6:
        raise ReplyError("stats.feature-mass: negative values")
    if abs(float(mass.sum()) - n) > 1e-3 * max(n, 1):
        raise ReplyError(f"stats.feature-mass: sums to {float(mass.sum()):.6g}, not num-examples {n}")


def _check_sums(sums: torch.Tensor, mass: torch.Tensor) -> None:
    """|S_k| <= M_k: a soft sum of unit-length features is no longer than its mass."""
    excess = sums.norm(dim=1) - mass * (1 + 1e-4) - 1e-5
    if float(excess.max()) > 0:
        raise ReplyError("stats.feature-sums: a class sum is longer than its mass (features are unit length)")


@dataclass(frozen=True)
class LabelFree:
    """One device's label-free statistics of a model: mean prediction entropy, mean prediction (K,), samples."""

    entropy: float
    mean_prediction: torch.Tensor
    n: int


def label_free_metrics(items: list[LabelFree], defence: Defence | None = None) -> dict[str, MetricRecordValues]:
    """The fleet's label-free view of a model, no label used: ``prediction-entropy`` (mean per-sample
    entropy, nats: confidence), ``class-balance`` (entropy of the fleet's mean prediction over log K:
    1 = every class predicted alike, 0 = one class) and ``label-free-score`` = prediction-entropy -
    H(mean prediction), the information-maximisation objective (lower is better). The devices' figures
    are combined by the fleet's ``defence`` (the export rule reads them: one device must not choose)."""
    if defence is None or defence.aggregation == "mean":
        total = sum(i.n for i in items)
        mean_entropy = sum(i.entropy * i.n for i in items) / total
        p = torch.stack([i.mean_prediction * (i.n / total) for i in items]).sum(dim=0)  # (K,)
    else:
        rows = [({"entropy": torch.tensor([i.entropy]), "p": i.mean_prediction.double()}, i.n) for i in items]
        combined = combine_statistics(rows, defence)
        mean_entropy, p = float(combined["entropy"][0]), project_distribution(combined["p"].float())
    marginal_entropy = float(entropy(p))
    return {
        "prediction-entropy": mean_entropy,
        "class-balance": marginal_entropy / math.log(max(len(p), 2)),
        "label-free-score": mean_entropy - marginal_entropy,
    }


@dataclass
class SharedStats:
    """The fleet's self-training aggregates, what a reply must carry for them, and their checkpoint.

    ``marginal_on`` / ``centroids_on`` say what the run shares; ``feature_dim`` is D+1 of the
    current phase's student (it changes when the pruned student replaces the dense one).
    """

    num_classes: int = 0
    marginal_on: bool = False
    centroids_on: bool = False
    feature_dim: int = 0
    marginal: torch.Tensor | None = None  # (K,) the fleet's mean prediction of the last round
    marginal_examples: int = 0  # the samples that marginal averages over
    sums: FeatureSums | None = None  # the fleet's feature sums and masses of the last round

    @property
    def active(self) -> bool:
        """Whether training replies carry a ``stats`` record."""
        return self.marginal_on or self.centroids_on

    def start_phase(self, feature_dim: int) -> None:
        """A phase's student has features of length ``feature_dim``; centroids of another length go."""
        if self.sums is not None and self.sums.sums.shape[1] != feature_dim:
            self.sums = None
        self.feature_dim = feature_dim

    def parse(self, content: RecordDict, n: int, evaluation: bool = False) -> DeviceStats:
        """A reply's ``stats``, validated (shapes, finite, probabilities, masses); empty when not shared.

        ``evaluation``: an evaluate reply asked for the fleet's statistics, which always carries the
        mean prediction (the label-free score reads it) and the feature sums where centroids are shared.
        """
        if not self.active:
            return DeviceStats()
        stats = P.from_record(P.array_record(content, P.STATS))
        check_arrays(stats, self._expected(evaluation), "stats")
        out = DeviceStats()
        if self.marginal_on:
            out.mean_prediction = _check_distribution(stats, "mean-prediction")
        if self.centroids_on:
            sums, mass = stats["feature-sums"].float(), stats["feature-mass"].float()
            _check_mass(mass, n)
            _check_sums(sums, mass)
            out.sums = FeatureSums(sums, mass)
        return out

    def _expected(self, evaluation: bool) -> dict[str, tuple[int, ...]]:
        """The arrays (name: shape) of a training reply's ``stats``, or of an evaluate reply's asked
        for the fleet's statistics (``evaluation``)."""
        k, d = self.num_classes, self.feature_dim
        expected: dict[str, tuple[int, ...]] = {}
        if self.marginal_on or evaluation:
            expected["mean-prediction"] = (k,)
        if self.centroids_on:
            expected |= {"feature-sums": (k, d), "feature-mass": (k,)}
        return expected

    def parse_label_free(self, content: RecordDict, unlabeled: int | None, with_stats: bool = False) -> LabelFree:
        """An evaluate reply's label-free statistics, validated: entropy in [0, log K], a mean
        prediction of K probabilities summing to 1, a positive sample count no larger than the
        device's ``unlabeled`` data (and, ``with_stats``, the fleet statistics the server asked for,
        checked by ``parse``)."""
        k = self.num_classes
        stats = P.from_record(P.array_record(content, P.STATS))
        check_arrays(stats, self._expected(True) if with_stats else {"mean-prediction": (k,)}, "stats")
        p = _check_distribution(stats, "mean-prediction")
        value = P.metric(content, "entropy")
        if not 0.0 <= value <= math.log(max(k, 2)) + 1e-4:
            raise ReplyError(f"metrics.entropy: {value:.4g} outside [0, log {k}]")
        n = check_examples(P.metric(content, "unlabeled"), maximum=unlabeled, what="metrics.unlabeled")
        return LabelFree(value, p, n)

    def update(
        self, items: list[tuple[DeviceStats, int]], defence: Defence | None = None
    ) -> dict[str, MetricRecordValues]:
        """The round's replies (stats, n) become the fleet's aggregates, combined by the fleet's
        ``defence`` (the example-weighted mean and the plain sums without one, or under ``mean``);
        returns label-free signals: the marginal's entropy (nats, class balance) and how many classes
        have a centroid."""
        defence = defence or Defence()
        marginals = [(s.mean_prediction, n) for s, n in items if s.mean_prediction is not None]
        if marginals and defence.aggregation == "mean":
            self.marginal = weighted_average([({"p": p}, n) for p, n in marginals])["p"]
        elif marginals:  # a median or a clipped mean of distributions is made one again
            rows = [({"p": p.double()}, n) for p, n in marginals]
            self.marginal = project_distribution(combine_statistics(rows, defence)["p"].float())
        self.marginal_examples = sum(n for _, n in marginals) if marginals else self.marginal_examples
        parts = [(s.sums, n) for s, n in items if s.sums is not None]
        if parts and defence.aggregation != "mean":
            self.sums = _combined_sums(parts, defence)
        elif parts:
            self.sums = add_sums([sums for sums, _ in parts])
        metrics: dict[str, MetricRecordValues] = {}
        if self.marginal is not None:
            p = self.marginal
            metrics["marginal-entropy"] = float(entropy(p))
        if self.sums is not None:
            metrics["centroid-classes"] = int((self.sums.centroids().abs().sum(dim=1) > 0).sum())
        return metrics

    def records(self) -> dict[str, ArrayRecord]:
        """The ``fleet`` record of a training message: {"marginal": (K,), "centroids": (K, D+1)},
        each once it exists."""
        arrays: dict[str, torch.Tensor] = {}
        if self.marginal_on and self.marginal is not None:
            arrays["marginal"] = self.marginal
        if self.centroids_on and self.sums is not None:
            arrays["centroids"] = self.sums.centroids()
        return {P.FLEET: P.to_record(arrays)} if arrays else {}

    def config(self) -> dict[str, int]:
        """The config entry that goes with the marginal: the samples behind it."""
        return {"fleet-examples": self.marginal_examples} if self.marginal is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """The aggregates, for the run's checkpoint."""
        state: dict[str, Any] = {}
        if self.marginal is not None:
            state |= {"marginal": self.marginal, "examples": self.marginal_examples}
        if self.sums is not None:
            state |= {"feature-sums": self.sums.sums, "feature-mass": self.sums.mass}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the aggregates of a checkpoint (``state_dict``'s keys, each optional)."""
        if "marginal" in state:
            self.marginal, self.marginal_examples = state["marginal"], int(state["examples"])
        if "feature-sums" in state:
            self.sums = FeatureSums(state["feature-sums"], state["feature-mass"])


def _combined_sums(parts: list[tuple[FeatureSums, int]], defence: Defence) -> FeatureSums:
    """The fleet's class feature sums under a robust mode: each device's sums and masses per example,
    combined by ``defence``, times the fleet's examples (what ``add_sums`` gives under the mean)."""
    rows = [({"sums": sums.sums.double() / n, "mass": sums.mass.double() / n}, n) for sums, n in parts]
    combined = combine_statistics(rows, defence)
    total = sum(n for _, n in parts)
    return FeatureSums((combined["sums"] * total).float(), (combined["mass"].clamp_min(0) * total).float())
