"""The label-free rules that decide how long the teacher self-trains, by hand."""

import math

import pytest
import torch
from torch import nn

from server.guards import KEEP_MARGIN, still_climbing, weak_teacher
from server.phases import source_score


def test_the_source_score_is_the_im_objective_of_the_teachers_logits():
    logits = 100.0 * torch.eye(4)  # each sample sure of its own class: entropy 0, marginal uniform (log 4)
    assert source_score(nn.Identity(), logits) == pytest.approx(-math.log(4), abs=1e-4)
    assert source_score(nn.Identity(), torch.zeros(6, 4)) == pytest.approx(0.0, abs=1e-6)  # every sample unsure
    collapsed = torch.tensor([[100.0, 0.0], [100.0, 0.0]])  # confident, but one class
    assert source_score(nn.Identity(), collapsed) == pytest.approx(0.0, abs=1e-4)


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
    assert still_climbing([0.0, -KEEP_MARGIN]) is False  # exactly the margin: noise
    assert still_climbing([-1.0, None, -1.08]) is False  # 0.08 over two rounds: 0.04 a round
    assert still_climbing([-1.0, None, -1.12]) is True  # 0.06 a round
    assert still_climbing([-2.0, -1.5]) is False  # got worse


def test_still_climbing_needs_two_evaluated_rounds():
    assert still_climbing([]) is False
    assert still_climbing([-1.0]) is False
    assert still_climbing([None, -1.0]) is False
