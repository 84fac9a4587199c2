"""The dense teacher's own federated self-training, the phase before every method's.

Every method starts from, and distils from, the teacher this phase leaves, so comparisons isolate the
pruning. How long it runs is decided from the fleet's label-free score, never a target label:

- ``federation.teacher_rounds`` rounds (auto: 3 where the fleet shares a domain, 0 where every device is a
  domain of its own);
- where that gives none, ``federation.weak_teacher_rounds`` rounds for a *weak* teacher
  (``server.guards.weak_teacher``): KD towards a teacher that has lost most of its certainty holds every
  student near it, so it must adapt first;
- then one round more at a time while the score still falls by more than the keep margin per round
  (``server.guards.still_climbing``), up to ``federation.teacher_max_rounds``.

Under ``federation.privacy`` the rounds are those configured: the accountant plans them before the run.
"""

from __future__ import annotations

import torch

from admp.centroids import feature_dim
from server.guards import keeps_result, still_climbing, weak_teacher
from server.phases import teacher_delivery
from server.rounds import Weights
from server.session import Session
from server.setup import RunSetup
from strategies.fedadmp import FedKD

SCORES = "self_training_scores"  # teacher_info: the score after each round (entry 0: the start)


def planned_rounds(session: Session) -> int:
    """The rounds the phase plays before its extension (decided once, kept in the checkpoint)."""
    run, fed = session.run, session.run.cfg.federation
    info = run.teacher_info
    if "self_training_planned" not in info:
        rounds = fed.self_training_rounds()
        private = session.fleet.privacy is not None
        if rounds == 0 and fed.weak_teacher_rounds > 0 and not private:
            weak = weak_teacher(info.get("label_free_score"), info.get("source_label_free_score"))
            info["weak_teacher"] = weak
            rounds = fed.weak_teacher_rounds if weak else 0
        info["self_training_planned"] = rounds
    return int(info["self_training_planned"])


def _strategy(run: RunSetup, session: Session, weights: Weights) -> FedKD:
    hp = run.cfg.admp.model_copy(update={"lambda_kd": 0.0}).model_dump()
    fed = run.cfg.federation
    return FedKD(
        weights=weights,
        keep=None,
        local_epochs=fed.local_epochs,
        lr=run.cfg.admp.lr,
        fleet=session.fleet,
        policy=session.policy,
        config={"hp": hp},
    )


def self_train_teacher(session: Session) -> bool:
    """The phase (module docstring): IM with the fleet's marginal and centroid pseudo labels, no KD.
    Returns False when the run paused inside the phase."""
    run, fed = session.run, session.run.cfg.federation
    ckpt = run.checkpoint
    if ckpt is not None and ckpt.phase != "teacher":
        return True  # resumed after it: the checkpoint's teacher is the one it left
    planned = planned_rounds(session)
    if planned == 0:
        return True
    weights, first = run.teacher.state_dict(), 1
    if ckpt is not None:
        weights, first = ckpt.student, ckpt.round + 1
    strategy = _strategy(run, session, weights)
    scores: list[float | None] = run.teacher_info.setdefault(SCORES, [run.teacher_info.get("label_free_score")])
    checkpoint = session.checkpointer("teacher")

    def on_round(rnd: int, new: Weights) -> bool:
        scores.extend([None] * (rnd + 1 - len(scores)))
        scores[rnd] = session.runner.last_figures.get("label-free-score")
        return checkpoint(rnd, new)

    session.fleet.shared.start_phase(feature_dim(run.teacher))
    if first == 1:  # the first round trains on the fleet's statistics of the starting teacher
        session.runner.evaluate_all(strategy, 0, weights, session.runner.local_bn, fleet_stats=True)
    runner, last = session.runner, first - 1
    if first <= planned:
        rounds = range(first, planned + 1)
        weights, finished = runner.run_rounds(strategy, "teacher", weights, rounds, on_round, whole_phase=first == 1)
        if not finished:
            return False
        last = planned
    cap = planned if session.fleet.privacy is not None else max(planned, fed.teacher_round_cap())
    while last < cap and still_climbing(scores[: last + 1]):
        last += 1
        one = range(last, last + 1)
        weights, finished = runner.run_rounds(strategy, "teacher", weights, one, on_round, whole_phase=False)
        if not finished:
            return False
    return _settle(session, strategy, weights, last)


def _settle(session: Session, strategy: FedKD, weights: Weights, rounds: int) -> bool:
    """After ``rounds`` rounds: keep the self-trained teacher unless its label-free score got worse than
    the start's (``server.guards.keeps_result``); later round numbers follow these rounds either way."""
    run = session.run
    run.checkpoint = None  # a checkpoint inside this phase is used up: the next phases start afresh
    figures = session.runner.evaluate_all(strategy, rounds, weights, session.runner.local_bn)
    before, after = run.teacher_info.get("label_free_score"), figures.get("label-free-score")
    run.teacher_info |= {
        "target_acc_self_trained": figures.get("accuracy"),
        "label_free_score_self_trained": after,
        "self_training_rounds": rounds,
    }
    if not keeps_result(before, after):  # label-free: the self-trained teacher is worse; keep the start
        run.teacher_info["self_training"] = "discarded"
        run.console.print(f"[yellow]teacher self-training discarded: label-free score {after:.3f} > {before:.3f}")
        return True
    run.teacher_info["self_training"] = "kept"
    torch.save(weights, run.run_dir.file("teacher_self_trained.pt"))  # what every later phase distils from
    run.teacher.load_state_dict(weights)
    run.teacher.eval()
    sent = session.fleet.delivery.sends  # copies sent so far still count
    session.fleet.delivery = teacher_delivery(run.teacher)  # devices fetch the adapted teacher by its new hash
    session.fleet.delivery.sends = dict(sent)
    return True
