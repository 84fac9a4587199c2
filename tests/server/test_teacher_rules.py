"""The label-free rules that decide how long the teacher self-trains, by hand."""

import math

import pytest
import torch

from admp.objective import label_free_score
from server.guards import still_climbing, weak_teacher


def test_label_free_score_of_confident_balanced_and_uniform_predictions():
    one_hot = torch.eye(4)  # each sample sure of its own class: entropy 0, marginal uniform (log 4)
    assert label_free_score(one_hot) == pytest.approx(-math.log(4))
    uniform = torch.full((6, 4), 0.25)  # every sample unsure: log 4 - log 4
    assert label_free_score(uniform) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # confident but one class: 0 - 0
    assert label_free_score(collapsed) == pytest.approx(0.0, abs=1e-6)


def test_a_teacher_that_keeps_under_half_its_source_certainty_is_weak():
    assert weak_teacher(-0.51, -2.2) is True  # 0.51 < 1.1: the colour teacher at chance
    assert weak_teacher(-1.51, -2.2) is False  # 1.51 >= 1.1: the digits teacher
    assert weak_teacher(-1.10, -2.2) is False  # exactly half: not weak
    assert weak_teacher(-1.09, -2.2) is True


def test_without_both_scores_or_certainty_on_the_source_nothing_is_weak():
    assert weak_teacher(None, -2.2) is False
    assert weak_teacher(-0.5, None) is False
    assert weak_teacher(-0.5, 0.0) is False
    assert weak_teacher(0.3, 0.1) is False


def test_still_climbing_reads_the_last_two_evaluated_rounds_per_round():
    assert still_climbing([-0.51, -1.30, -1.68]) is True  # 0.38 a round
    assert still_climbing([-1.93, -2.02, -2.048]) is False  # 0.028 a round: a plateau
    assert still_climbing([-2.0, -2.06]) is True  # 0.06 > 0.05
    assert still_climbing([-2.0, -2.05]) is False  # exactly the margin: noise
    assert still_climbing([-1.0, None, -1.08]) is False  # 0.08 over two rounds: 0.04 a round
    assert still_climbing([-1.0, None, -1.12]) is True  # 0.06 a round
    assert still_climbing([-2.0, -1.5]) is False  # got worse


def test_still_climbing_needs_two_evaluated_rounds():
    assert still_climbing([]) is False
    assert still_climbing([-1.0]) is False
    assert still_climbing([None, -1.0]) is False
