"""The per-device worker (``clients.worker``) behind the thin ClientApp entry (``clients.entry``).

A real worker process on a Unix socket: the entry forwards an identity query, an evaluation and a
training message (per-client dual: state that must come back to the SuperNode's context) and gets
the same reply content as ``clients.app.app`` called directly; malformed requests get error replies
and the worker goes on; without a worker the entry runs the app itself; the entry imports no torch.
The worker is this module's child in a session of its own, ended by its handle (SIGTERM).
"""

import os
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict

from clients import app as client
from clients import entry, wire
from strategies import protocol as P
from tests.clients.test_client_app import _message

pytestmark = pytest.mark.usefixtures("flower_task")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def device_cache(monkeypatch):
    monkeypatch.setenv("FEDADMP_CACHE_DIR", "")  # restored after each test; _message points it elsewhere


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A worker for device 0 (its own teacher store); yields (socket path, process, log file)."""
    base = tmp_path_factory.mktemp("worker")
    sock, log = base / "node" / "worker.sock", base / "node" / "worker.log"
    config = f'partition-id=0 cache-dir="{base / "store"}"'
    cmd = [sys.executable, "-m", "clients.worker", "--socket", str(sock), "--node-config", config, "--log", str(log)]
    with (base / "worker.out").open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not wire.answers(str(sock)):
            assert proc.poll() is None and time.monotonic() < deadline, (base / "worker.out").read_text()
            time.sleep(0.2)
        yield sock, proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, (base / "worker.out").read_text()
    assert not sock.exists(), "the worker left its socket behind"


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=50, node_config=node_config, state=RecordDict(), run_config={})


def _sent(msg: Message) -> Message:
    """The message as a SuperNode hands it to a ClientApp: its id is its object id."""
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _content(reply: Message) -> dict:
    """A reply's content as plain values, without the handler's wall time."""
    assert not reply.has_error(), reply.error.reason
    out = {}
    for key, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            out[key] = {k: (a.numpy().dtype.str, a.numpy().tobytes()) for k, a in record.items()}
        else:
            out[key] = {k: v for k, v in record.items() if k != "seconds"}
    return out


def _both(msg: Message, sock: Path, store: Path) -> tuple[Message, Message, Context]:
    """(reply through the worker, reply of clients.app called directly, the forwarding SuperNode context)."""
    via = _context({"partition-id": 0, "worker-socket": str(sock)})
    forwarded = entry.app(_sent(msg), via)
    direct_ctx = _context({"partition-id": 0, "cache-dir": str(store)})
    return forwarded, client.app(msg, direct_ctx), via


def test_identity_query_round_trips(worker, tmp_path):
    sock, _, _ = worker
    msg = _sent(Message(RecordDict({}), dst_node_id=50, message_type=P.QUERY_ID))
    forwarded, direct, _ = _both(msg, sock, tmp_path)
    assert _content(forwarded) == _content(direct) == {P.METRICS: {"device": 0}}
    assert forwarded.metadata.reply_to_message_id == msg.metadata.message_id != ""
    assert forwarded.metadata.message_type == P.QUERY_ID
    assert (forwarded.metadata.src_node_id, forwarded.metadata.dst_node_id) == (50, msg.metadata.src_node_id)


def test_evaluation_and_training_round_trip(worker, tmp_path):
    """Same records, same bytes; the per-client dual the worker keeps comes back to the SuperNode."""
    sock, _, _ = worker
    import torch

    from admp.models import build_model

    torch.manual_seed(0)
    teacher = build_model("lenet", 10, 0.25).state_dict()
    evaluation = _message(tmp_path / "store", teacher, with_teacher=False)
    evaluation.metadata.message_type = P.EVALUATE
    forwarded, direct, _ = _both(evaluation, sock, tmp_path / "store")
    assert _content(forwarded) == _content(direct)
    assert "accuracy" in _content(forwarded)[P.METRICS]
    train = _message(tmp_path / "store", teacher, with_teacher=True, dual="per_client")
    forwarded, direct, via = _both(train, sock, tmp_path / "store")
    assert _content(forwarded) == _content(direct)
    assert forwarded.metadata.reply_to_message_id == train.metadata.message_id
    assert "dual" in via.state and "device" in via.state  # the worker's state, handed back


def _raw(sock: Path, payload: bytes) -> Message | None:
    """Send raw bytes, half-close, read the reply's error (None if the worker sent nothing)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(sock))
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        frames = wire.recv_frames(conn, 2)
    if frames is None:
        return None
    body, state = wire.decode_reply(frames)
    assert state is None
    return body


def test_malformed_requests_get_error_replies_and_the_worker_survives(worker):
    sock, proc, log = worker
    frame = struct.Struct(">Q")
    garbage = frame.pack(5) + b"\xff\xfe\x00\x01\x02" + frame.pack(3) + b"abc"
    for payload in (garbage, frame.pack(1 << 40), frame.pack(10) + b"short", b"\x00\x01"):
        error = _raw(sock, payload)
        assert error is not None and error.code == wire.APP_ERROR and "malformed request" in error.reason
    unknown = _sent(Message(RecordDict({}), dst_node_id=50, message_type="query.nothing"))
    reply = entry.app(unknown, _context({"partition-id": 0, "worker-socket": str(sock)}))
    assert reply.has_error() and "No query function registered" in reply.error.reason
    assert proc.poll() is None
    ident = _sent(Message(RecordDict({}), dst_node_id=50, message_type=P.QUERY_ID))
    assert _content(entry.app(ident, _context({"partition-id": 0, "worker-socket": str(sock)})))[P.METRICS] == {
        "device": 0
    }
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert log.read_text().count("malformed request") == 4


def test_without_a_reachable_worker_the_entry_runs_the_app_itself(tmp_path):
    msg = _sent(Message(RecordDict({}), dst_node_id=57, message_type=P.QUERY_ID))
    missing = entry.app(msg, _context({"partition-id": 3, "worker-socket": str(tmp_path / "none.sock")}))
    plain = entry.app(msg, _context({"partition-id": 3}))
    assert _content(missing) == _content(plain) == {P.METRICS: {"device": 3}}
    assert missing.metadata.reply_to_message_id == msg.metadata.message_id


def test_the_entry_imports_no_torch():
    code = "import sys, clients.entry; print(sorted(m for m in ('torch', 'clients.app', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and "clients.app" not in out, out
    assert np.__name__  # numpy may come with Flower; torch must not


def test_the_kit_gives_the_supernode_the_socket_and_the_worker_the_device_config(tmp_path):
    """``worker-socket`` only in the SuperNode's node config (both parsed by Flower's own parser);
    ``--no-workers``: the SuperNode's config is the device's alone."""
    from flwr.common.config import parse_config_args

    from deploy import spec as kit

    lay = kit.Layout(tmp_path / "fleet")
    spec = kit.Spec(devices=2, data_path="/data/dev{i}.npz")
    node = parse_config_args([kit.supernode_config(spec, lay, 1)])
    assert node["worker-socket"] == str(lay.node(1) / "worker.sock") and node["device-id"] == 1
    cmd = kit.worker_command(lay, 1, kit.node_config(spec, lay, 1))
    device = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert device == {k: v for k, v in node.items() if k != "worker-socket"}
    assert device["data-path"] == "/data/dev1.npz"
    assert "worker-socket" not in parse_config_args([kit.supernode_config(kit.Spec(workers=False), lay, 0)])
