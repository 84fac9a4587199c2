"""What a federated run exports: the label-free choice between its candidate students.

Candidates, each scored by one federated evaluation of the fleet's label-free score (no target label):
the fine-tune phase's result (``final``), the model it started from (``start``: FedADMP's merge,
naive's cloud start, fedkd's dense copy), the cloud's start (``cloud``: the teacher pruned to the L1
keep set and recovered on the source, what naive starts from; FedADMP runs only), and the dense
``teacher`` as the fallback when every pruned candidate is flagged. The rule is
``server.guards.choose_export``; the summary's ``selection`` entry lists every candidate's score, its
accuracy (reported, never used) and the reason for the choice. Every pruned candidate is also written
to ``candidates/NAME.pt`` (the bundle format of ``pruned_model.pt``), so that other label-free rules can
be measured on finished runs (``benchmarks/export_criteria.py``) before one decides anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from admp.masks import MaskDict
from admp_export.bundle import save_bundle
from server.fleet import pool_bn_statistics
from server.guards import ADAPTED_MARGIN, choose_export, reference_guard
from server.rounds import Weights
from server.starts import Start, cloud_start
from strategies.fedadmp import FedKD

if TYPE_CHECKING:
    from server.session import Session


def _score(session: Session, weights: Weights, keep: MaskDict | None, rnd: int) -> dict[str, Any]:
    """One federated evaluation of a candidate: its weights, keep set, label-free score and accuracy."""
    probe = session.kd_strategy(weights, keep)
    figures = session.runner.evaluate_all(probe, rnd, weights, session.runner.local_bn)
    return {
        "weights": weights,
        "keep": keep or {},
        "score": figures.get("label-free-score"),
        "acc": figures.get("accuracy"),
    }


def start_candidates(session: Session, strategy: FedKD, start: Start, rnd: int) -> dict[str, Any]:
    """The phase's start scored (its evaluation also sets the fleet's statistics for the first round)
    and, in a FedADMP run, the cloud's start scored too: the candidates the phase's result must beat."""
    run = session.run
    figures = session.runner.evaluate_all(strategy, rnd, start.weights, session.runner.local_bn, True)
    row = {"phase": "start", "step": rnd, "round": rnd, "target_acc": figures.get("accuracy")}
    run.run_dir.log_metrics(row | {"label_free_score": figures.get("label-free-score")})  # merge / cloud start
    kept = {"weights": start.weights, "keep": start.keep or {}, "score": figures.get("label-free-score")}
    candidates: dict[str, Any] = {"start": kept | {"acc": figures.get("accuracy")}}
    if run.cfg.federation.strategy == "fedadmp":
        with torch.random.fork_rng():  # the cloud's repair draws no number a resumed run would not draw
            cloud = start.cloud or cloud_start(run, start.mask_rounds_done)
        candidates["cloud"] = _score(session, cloud.weights, cloud.keep, rnd)
    return candidates


def select_export(
    session: Session, weights: Weights, keep: MaskDict | None, starts: dict[str, Any], rnd: int
) -> tuple[Weights, MaskDict | None]:
    """The candidate the label-free rule exports, as (weights, keep; None: dense); the choice and every
    score go to ``session.selection``."""
    run = session.run
    last = session.runner.last_figures  # the last round's evaluation of these weights
    final = {"weights": weights, "keep": keep or {}, "score": last.get("label-free-score"), "acc": last.get("accuracy")}
    if "label-free-score" not in last:  # resumed after the phase's last round: nothing evaluated them here
        final = _score(session, weights, keep, rnd)
    candidates = {"final": final, **starts}
    info = run.teacher_info
    teacher_score = info.get(
        "label_free_score_self_trained" if info.get("self_training") == "kept" else "label_free_score"
    )
    fallback = teacher_score if run.cfg.federation.teacher_fallback else None
    name, reason = choose_export([(n, c["score"]) for n, c in candidates.items()], fallback)
    session.selection = {
        "chosen": name,
        "reason": reason,
        "teacher_score": teacher_score,
        "candidates": {n: {"score": c["score"], "accuracy": c.get("acc")} for n, c in candidates.items()},
    }
    fed = run.cfg.federation
    if fed.export_reference and fed.teacher_fallback and name != "teacher":  # no fallback: a pruned model ships
        check = reference_check(session, candidates[name], rnd)
        session.selection["reference"] = check
        if check.get("gives_way"):
            name = session.selection["chosen"] = "teacher"
            session.selection["reason"] = reason = check["reason"]
    save_candidates(session, candidates)
    if name != "final":
        run.console.print(f"[yellow]exporting the {name} candidate: {reason}")
    if name == "teacher":
        return run.teacher.state_dict(), None
    chosen = candidates[name]
    return chosen["weights"], chosen["keep"] or None


def save_candidates(session: Session, candidates: dict[str, Any]) -> None:
    """Each pruned candidate as a bundle in ``candidates/`` of the run directory."""
    run = session.run
    folder = run.run_dir.file("candidates")
    folder.mkdir(exist_ok=True)
    for name, candidate in candidates.items():
        keep = candidate["keep"] or None
        model = run.model(keep)
        model.load_state_dict(candidate["weights"])
        save_bundle(folder / f"{name}.pt", run.arch, run.task.num_classes, run.cfg.model.width, keep, model)


def reference_check(session: Session, chosen: dict[str, Any], rnd: int) -> dict[str, Any]:
    """``federation.export_reference``: the chosen candidate's and the source teacher's disagreement with
    the self-trained teacher the devices hold (% of the fleet's unlabeled samples, each model with the
    device's BN as evaluated), and whether the candidate gives way to it (``server.guards.reference_guard``).
    Applies only where the run kept a self-trained teacher."""
    run = session.run
    if run.teacher_info.get("self_training") != "kept":
        return {"applies": False, "reason": "no self-trained teacher to compare with"}
    try:
        source = torch.load(run.run_dir.file("teacher.pt"), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        return {"applies": False, "reason": f"teacher.pt unreadable ({exc})"}
    source_bn = run.cfg.admp.teacher_bn == "local"
    if run.cfg.admp.teacher_bn == "fleet":  # "teacher + target BN" as the run measured it: pooled statistics
        teacher = run.model()
        teacher.load_state_dict(source)
        pool_bn_statistics(session.runner, session.kd_strategy(source, None), teacher, rnd)
        source = teacher.state_dict()
    figures = {}
    local_bn = session.runner.local_bn
    rows = (("candidate", chosen["weights"], chosen["keep"] or None, local_bn), ("source", source, None, source_bn))
    for key, weights, keep, bn in rows:  # the candidate as scored; the source teacher with target BN
        probe = session.kd_strategy(weights, keep)
        found = session.runner.evaluate_all(probe, rnd, weights, bn, reference=True)
        figures[key] = found.get("reference-disagreement")
    gives_way = reference_guard(figures["candidate"], figures["source"])
    reason = (
        f"the chosen candidate disagrees with the self-trained teacher on {figures['candidate']:.2f} % of the "
        f"fleet's samples, the source teacher on {figures['source']:.2f} %: more than {ADAPTED_MARGIN} points "
        "apart, so the self-trained teacher is exported"
        if gives_way
        else "the chosen candidate stays"
    )
    return {"applies": True, "disagreement": figures, "gives_way": gives_way, "reason": reason}
