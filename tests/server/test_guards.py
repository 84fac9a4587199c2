"""The evaluation-only check: a student more than 1 point below "teacher + target BN" is
said so in the summary (by hand; it reads target labels' accuracy and decides nothing)."""

from server.guards import below_adapted_teacher


def test_a_student_more_than_a_point_below_the_adapted_teacher_is_flagged():
    teacher = {"target_acc": 60.0, "target_acc_target_bn": 90.0}
    assert below_adapted_teacher(teacher, {"target_acc": 88.9})["warning"] is True  # 1.1 below
    assert below_adapted_teacher(teacher, {"target_acc": 89.0})["warning"] is False  # exactly 1 below
    assert below_adapted_teacher(teacher, {"target_acc": 95.0}) == {
        "teacher_target_bn": 90.0,
        "student": 95.0,
        "warning": False,
    }


def test_without_labels_there_is_nothing_to_compare():
    assert below_adapted_teacher({"target_acc_target_bn": None}, {"target_acc": 80.0}) is None
    assert below_adapted_teacher({"target_acc_target_bn": 90.0}, {"target_acc": None}) is None
    assert below_adapted_teacher({}, {}) is None
