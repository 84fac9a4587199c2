"""Shared fixtures: the real data folder beside the project, when present."""

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (MNIST, USPS, HAPT npz); tests needing it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def set_flower_task() -> None:
    """Set the task identity Flower's Message constructor reads outside a running app (in-process runs);
    module-scoped fixtures call it, tests use the ``flower_task`` fixture."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture
def flower_task() -> None:
    """The task identity Flower's Message constructor reads outside a running app (in-process runs)."""
    set_flower_task()


@pytest.fixture
def quiet_console(monkeypatch):
    """A run's console prints nothing."""
    from rich.console import Console

    monkeypatch.setattr("server.setup.Console", lambda: Console(quiet=True))
