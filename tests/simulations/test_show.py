"""``fedadmp show`` and ``simulations.api.show`` on run directories written by hand."""

import json

import pytest

from admp_config.base import ConfigError
from simulations.api import show
from simulations.cli import main
from simulations.show import metrics_table

SUMMARY = {
    "run_dir": "/runs/r",
    "mode": "federated",
    "strategy": "fedadmp",
    "dataset": "digits",
    "teacher": {"target_acc": 71.0, "channels": {"conv1": 32}, "params": 100, "macs": 1000, "latency_ms": 0.5},
    "student": {"target_acc": 93.25, "channels": {"conv1": 13}, "params": 40, "macs": 300, "latency_ms": 0.25},
}
ROWS = [
    {"phase": "mask", "step": 1, "round": 1, "target_acc": 90.5, "bytes_up": 2_230_000, "valid_replies": 3.0},
    {"phase": "merge", "step": 1, "round": 1, "channels_pruned": 0.59},
    {"phase": "final", "step": 2, "round": 2, "target_acc": 93.25},
]


def _run_dir(tmp_path, summary=SUMMARY, rows=ROWS):
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "metrics.json").write_text(json.dumps(rows))
    return tmp_path


def test_show_prints_each_round_and_the_summary(tmp_path, capsys):
    assert main(["show", str(_run_dir(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "90.50" in out and "2.23" in out and "93.25" in out and "conv1: 13/32" in out
    assert "step" not in out.split("federated")[0]  # rounds counted once: round, not step as well


def test_show_keeps_the_last_rows_and_says_so(tmp_path, capsys):
    assert main(["show", str(_run_dir(tmp_path)), "--rows", "1"]) == 0
    out = capsys.readouterr().out
    assert "the last 1 of 3 rows" in out and "90.50" not in out


def test_the_table_leaves_out_columns_no_row_has():
    headers = [c.header for c in metrics_table(ROWS, "t").columns]
    assert headers == ["phase", "round", "acc %", "ok", "up MB"]


@pytest.mark.parametrize(
    ("write", "needle"),
    [
        (lambda d: None, "no summary.json"),
        (lambda d: (d / "summary.json").write_text("{not json"), "not JSON"),
        (lambda d: (d / "summary.json").write_text("[1]"), "must hold an object"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_one_clear_error(tmp_path, capsys, write, needle):
    write(tmp_path)
    with pytest.raises(ConfigError, match=needle):
        show(tmp_path)
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
