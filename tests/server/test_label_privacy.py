"""Labels leave a device only as an accuracy over its test samples, and evaluation can run without them
(``federation.evaluate_labels: false``, or a node's own ``evaluate-labels=false``)."""

import pytest

from strategies import protocol as P
from tests.conftest import set_flower_task
from tests.inprocess_grid import InProcessGrid
from tests.server.test_server import _rows, _run, _summary


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    from rich.console import Console

    set_flower_task()
    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))


def test_a_run_without_labels_reports_only_label_free_figures(tmp_path):
    evaluations = []

    def spy(msg, reply):
        if str(msg.metadata.message_type) == P.EVALUATE and not reply.has_error():
            evaluations.append(dict(reply.content[P.METRICS]))
        return reply

    run = _run(tmp_path, "federation.evaluate_labels=false", grid=InProcessGrid(4, replies=spy))
    assert evaluations and all("accuracy" not in m and m[P.NUM_EXAMPLES] == 0 for m in evaluations)
    assert all("entropy" in m and m["unlabeled"] > 0 for m in evaluations)  # the label-free figures still come
    summary = _summary(run)
    assert summary["student"]["target_acc"] is None and summary["teacher"]["target_acc"] is None
    assert all(r.get("target_acc") is None for r in _rows(run))
    assert any(r.get("label_free_score") is not None for r in _rows(run))


def test_a_node_can_refuse_to_read_its_labels(tmp_path):
    grid = InProcessGrid(4)
    grid.contexts[100].node_config["evaluate-labels"] = "false"  # device 0 keeps its labels to itself
    seen = {}

    def spy(msg, reply):
        if str(msg.metadata.message_type) == P.EVALUATE and not reply.has_error():
            seen.setdefault(msg.metadata.dst_node_id, dict(reply.content[P.METRICS]))
        return reply

    grid.tamper = spy
    summary = _summary(_run(tmp_path, grid=grid))
    assert "accuracy" not in seen[100] and "accuracy" in seen[101]
    assert summary["student"]["target_acc"] is not None  # the others' accuracy, weighted by their test samples
