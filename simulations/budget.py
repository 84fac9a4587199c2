"""The centralized run's schedule matched to a federated run's sample budget (``schedule.budget: federation``).

A federated round trains ``clients_per_round`` of the fleet's devices, each for its local epochs
(more than ``local_epochs`` on a small device, for ``min_local_steps``). In expectation over the
uniform sampling that is E = (clients / devices) * sum_d n_d e_d / sum_d n_d passes over the pooled
data per round; the centralized phases take E epochs per round of the federated ones.
"""

from __future__ import annotations

from admp.trainer import local_epochs_for
from admp_config.schema import ScenarioConfig
from admp_config.sections import ScheduleSpec


def epochs_per_round(cfg: ScenarioConfig, sizes: list[int]) -> float:
    """E: expected passes over the pooled data (sizes n_d per device) that one federated round trains."""
    fed, total = cfg.federation, sum(sizes)
    if not sizes or total == 0:
        return 0.0
    epochs = [
        local_epochs_for(n, cfg.admp.batch_size, fed.local_epochs, fed.min_local_steps, fed.max_local_epochs)
        for n in sizes
    ]
    trained = sum(n * e for n, e in zip(sizes, epochs, strict=True))
    share = min(fed.clients_per_round, len(sizes)) / len(sizes)
    return share * trained / total


def matched_schedule(cfg: ScenarioConfig, sizes: list[int]) -> ScheduleSpec:
    """The centralized schedule of the federation's budget: every phase's rounds times E, rounded
    (at least one mask epoch; a Z-step every round's worth of epochs, at least every epoch)."""
    fed, per_round = cfg.federation, epochs_per_round(cfg, sizes)
    mask = max(1, round(per_round * fed.mask_rounds))
    return ScheduleSpec(
        budget="federation",
        teacher_epochs=round(per_round * fed.self_training_rounds()),
        warmup_epochs=min(mask, round(per_round * fed.warmup_rounds)),
        mask_epochs=mask,
        admm_every=max(1, round(per_round)),
        finetune_epochs=round(per_round * fed.finetune_rounds),
    )
