"""Label-free guards: a phase's result replaces what it started from unless the fleet's label-free
score got worse by more than noise.

The score is the information-maximisation objective of the fleet's predictions on the devices'
unlabeled data (mean prediction entropy minus the entropy of the fleet's mean prediction;
``strategies.selftraining.label_free_metrics``): a model that grows unsure, or that collapses onto
a few classes, scores worse. No target label is read. Used after the teacher's self-training (a
worse teacher is discarded) and after the fine-tune phase (the phase's start is kept if the
rounds made it worse by more than ``KEEP_MARGIN``); the summary reports the scores and flags a
student whose score is worse than the teacher's at the start by more than ``FLAG_MARGIN`` nats.
"""

from __future__ import annotations

from typing import Any

FLAG_MARGIN = 0.1  # nats; a reporting threshold, not tuned on any result
KEEP_MARGIN = 0.05  # nats a result may score worse and still be kept: above the round-to-round spread of
#   the score in stable runs (<= 0.02 in the first study runs, read from the score alone, no label)
WEAK_SHARE = 0.5  # a teacher is weak on the fleet when it keeps less than this share of its source certainty


def keeps_result(before: float | None, after: float | None) -> bool:
    """True when the phase's result is kept: no score to compare, or the score got worse by no more
    than ``KEEP_MARGIN`` (noise); a larger loss of confidence or of class balance discards it."""
    return before is None or after is None or after <= before + KEEP_MARGIN


def weak_teacher(fleet_score: float | None, source_score: float | None) -> bool:
    """True when the teacher keeps less than ``WEAK_SHARE`` of its certainty on the fleet: certainty is
    minus the label-free score (confident, balanced predictions score low, so certainty is high), on the
    fleet's unlabeled data against the source validation split, where the teacher is known to be right.
    Such a teacher is far from adapted, and distilling towards it holds every student near it."""
    if fleet_score is None or source_score is None or source_score >= 0:
        return False  # nothing to compare, or no certainty on the source to lose
    return -fleet_score < WEAK_SHARE * -source_score


def still_climbing(scores: list[float | None]) -> bool:
    """Whether self-training is still improving: the label-free score fell by more than ``KEEP_MARGIN``
    per round between the last two evaluated entries of ``scores`` (entry r: after round r, entry 0 the
    start; None where a round was not evaluated). Less than that is the score's noise, a plateau."""
    known = [(r, s) for r, s in enumerate(scores) if s is not None]
    if len(known) < 2:
        return False
    (r0, s0), (r1, s1) = known[-2], known[-1]
    return (s0 - s1) / (r1 - r0) > KEEP_MARGIN


def student_flag(teacher_score: float | None, student_score: float | None) -> dict[str, Any]:
    """The summary's ``label_free`` entry: both scores and whether the student's is worse than the
    teacher's by more than ``FLAG_MARGIN`` (a warning that the run may have ended below its start)."""
    flagged = teacher_score is not None and student_score is not None and student_score > teacher_score + FLAG_MARGIN
    return {"teacher_score": teacher_score, "student_score": student_score, "below_start_warning": flagged}


def choose_export(pruned: list[tuple[str, float | None]], teacher_score: float | None) -> tuple[str, str]:
    """The label-free choice of what a run exports: (name, reason).

    ``pruned`` lists the pruned candidates with their label-free scores (lower is better), in order of
    preference: the trained result first, then the phase's start (the merge), then the cloud's start
    (naive's L1 choice recovered on the source). The first candidate within ``KEEP_MARGIN`` of the
    best score wins, so training is kept unless a start is clearly better. If even that candidate
    scores worse than the teacher by more than ``FLAG_MARGIN`` (the run's own below-start warning),
    the dense ``teacher`` is exported instead: a flagged model never ships as if nothing happened.
    Candidates without a score (no evaluation answered) are passed over; with none scored, the first.
    """
    scored = [(name, score) for name, score in pruned if score is not None]
    if not scored:
        return pruned[0][0], "no label-free score to compare: the trained result"
    best = min(score for _, score in scored)
    name, score = next((n, s) for n, s in scored if s <= best + KEEP_MARGIN)
    reason = f"label-free score {score:.3f}, within {KEEP_MARGIN} of the best pruned candidate ({best:.3f})"
    if teacher_score is not None and score > teacher_score + FLAG_MARGIN:
        return "teacher", (
            f"every pruned candidate scores worse than the teacher by more than {FLAG_MARGIN} "
            f"(best {best:.3f} vs {teacher_score:.3f}): the dense teacher is exported"
        )
    return name, reason


ADAPTED_MARGIN = 1.0  # accuracy points below "teacher + target BN"; a reporting bar fixed before any run


def below_adapted_teacher(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any] | None:
    """Evaluation only (target labels; it decides nothing): whether the shipped student's accuracy is
    more than ``ADAPTED_MARGIN`` points below the source teacher with target BN statistics, the cheapest
    adaptation there is. None when either accuracy is unknown (a run without labels)."""
    adapted, reached = teacher.get("target_acc_target_bn"), student.get("target_acc")
    if adapted is None or reached is None:
        return None
    return {
        "teacher_target_bn": adapted,
        "student": reached,
        "warning": reached < adapted - ADAPTED_MARGIN,
    }


def reference_guard(candidate: float | None, source_teacher: float | None) -> bool:
    """Whether the chosen pruned candidate gives way to the run's self-trained teacher A: it disagrees with
    A on more of the fleet's samples (%) than the source teacher with target BN does, by more than
    ``ADAPTED_MARGIN`` points. Taking A as right wherever they disagree, the difference estimates how far
    the candidate falls below teacher + target BN. No label is read; False when a figure is missing."""
    return candidate is not None and source_teacher is not None and candidate > source_teacher + ADAPTED_MARGIN
