"""A real device trains and evaluates on its own data (node config ``data-path``), keeps the teacher in
its own ``cache-dir``, and nothing of the server's file system decides either."""

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from clients import app as client
from clients.local_data import read_local_device
from strategies import protocol as P
from tests.clients.test_client_app import _message, device_cache, teacher_state  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("flower_task")


def _node(device: int, **config: str) -> Context:
    return Context(
        run_id=1, node_id=60 + device, node_config={"device-id": device, **config}, state=RecordDict(), run_config={}
    )


def test_a_device_trains_on_its_own_npz_and_keeps_the_teacher_in_its_cache_dir(tmp_path, teacher_state):  # noqa: F811
    x = np.random.default_rng(0).integers(0, 256, size=(9, 1, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "local.npz", x=x, y=np.arange(9) % 10)
    cache = tmp_path / "node-cache"
    node = _node(0, **{"data-path": str(tmp_path / "local.npz"), "cache-dir": str(cache)})
    msg = _message(tmp_path / "server-side-store", teacher_state, with_teacher=True)
    reply = client.app(msg, node)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert int(reply.content[P.METRICS][P.NUM_EXAMPLES]) == 9  # its own 9 samples, not a scenario partition
    assert len(list(cache.glob("teacher-*.pt"))) == 1  # the node's cache-dir wins
    assert not (tmp_path / "server-side-store").exists()
    content = RecordDict({P.ARRAYS: msg.content[P.ARRAYS], P.CONFIG: msg.content[P.CONFIG]})
    evaluation = Message(content, dst_node_id=60, message_type=P.EVALUATE)
    result = client.app(evaluation, node)
    assert not result.has_error(), result.error.reason if result.has_error() else ""
    assert (
        int(result.content[P.METRICS][P.NUM_EXAMPLES]) == 9
    )  # labels y of x: evaluated on x (labels never trained on)


def test_local_data_files_are_checked_against_the_model(tmp_path):
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 1, 16, 16), np.float32))
    with pytest.raises(
        ValueError, match=r"small\.npz: x has samples of shape \(1, 16, 16\), the model takes \(1, 28, 28\)"
    ):
        read_local_device(str(tmp_path / "small.npz"), "", (1, 28, 28), 10, 0)
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 1, 28, 28), np.float32), y=np.array([0, 1, 2, 11]))
    with pytest.raises(ValueError, match="y has label 11"):
        read_local_device(str(tmp_path / "labels.npz"), "", (1, 28, 28), 10, 0)
    np.savez(tmp_path / "test.npz", x=np.ones((2, 1, 28, 28), np.float32), y=np.array([3, 4]))
    device = read_local_device(str(tmp_path / "labels.npz"), str(tmp_path / "test.npz"), (1, 28, 28), 12, 1)
    assert len(device.train) == 4 and device.test.y.tolist() == [3, 4]  # test-path: the labeled split


def test_an_unlabeled_image_folder_is_a_device_without_a_test_split(tmp_path):
    from PIL import Image

    (tmp_path / "cam").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40), 50 * i, np.uint8), mode="L").save(tmp_path / "cam" / f"{i}.png")
    device = read_local_device(str(tmp_path / "cam"), "", (1, 28, 28), 10, 2)
    assert tuple(device.train.x.shape) == (3, 1, 28, 28) and len(device.test) == 0
    assert float(device.train.x[2].max()) == pytest.approx(100 / 255)  # pixels / 255, resized to the model's input
