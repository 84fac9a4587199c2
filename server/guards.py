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


def keeps_result(before: float | None, after: float | None) -> bool:
    """True when the phase's result is kept: no score to compare, or the score got worse by no more
    than ``KEEP_MARGIN`` (noise); a larger loss of confidence or of class balance discards it."""
    return before is None or after is None or after <= before + KEEP_MARGIN


def student_flag(teacher_score: float | None, student_score: float | None) -> dict[str, Any]:
    """The summary's ``label_free`` entry: both scores and whether the student's is worse than the
    teacher's by more than ``FLAG_MARGIN`` (a warning that the run may have ended below its start)."""
    flagged = teacher_score is not None and student_score is not None and student_score > teacher_score + FLAG_MARGIN
    return {"teacher_score": teacher_score, "student_score": student_score, "below_start_warning": flagged}
