"""A device's long-lived worker: the real ClientApp, imported once, serving a thin per-message entry.

    python -m clients.worker --socket /var/run/fedadmp/worker.sock \\
        --node-config 'device-id=0 data-path="/data/local.npz" cache-dir="/var/cache/fedadmp"'

Flower 1.41 starts a fresh ``flwr-clientapp`` process for every message; with ``worker-socket="..."``
in the SuperNode's node config that process runs ``clients.entry`` (no torch), which forwards the
message here. The worker imports ``clients.app`` once, so torch, the device's data, its teacher and
student skeletons stay in memory between messages (the caches of ``clients.device``). It keeps one
``Context`` per (run id, node id), as a SuperNode does: its node config is the worker's own
``--node-config`` (the SuperNode's keys: ``device-id`` or ``partition-id``, ``data-path``,
``test-path``, ``cache-dir``, ``evaluate-labels``), its state starts as the SuperNode's state of
the first message of the run and then lives here (each reply hands it back to the SuperNode, so a
message that falls back to running in-process sees the same state).

The socket is created 0600 (only the worker's user may connect) and removed at exit; a stale
socket left by a killed worker is replaced, a live one is never taken over. Requests are served one
at a time (one device, one model in training at a time); a malformed request gets an error reply
and the worker goes on. Frames and serialization: ``clients/wire.py`` (Flower's protobufs, never
pickle). Log: ``--log`` (default: the socket's path with ``.log``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections import OrderedDict
from pathlib import Path
from types import FrameType
from typing import Any

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from clients import wire

LOG = logging.getLogger("fedadmp.worker")
REQUEST_TIMEOUT = 60.0  # to receive a request (sent right after connecting) or to send its reply
MAX_RUNS = 8  # contexts kept: the last runs this worker served
SOCKET_PATH_MAX = 107  # bytes of sun_path (108 with its NUL) on Linux


class Contexts:
    """One ``Context`` per (run id, node id), as a SuperNode keeps them, for the last ``limit`` runs."""

    def __init__(self, node_config: dict[str, Any], limit: int = MAX_RUNS) -> None:
        self.node_config, self.limit = node_config, limit
        self._runs: OrderedDict[tuple[int, int], Context] = OrderedDict()

    def get(self, sent: Context) -> Context:
        """The worker's context for the run of ``sent`` (the SuperNode's): made on the run's first
        message with the worker's node config and the SuperNode's state, kept afterwards."""
        key = (sent.run_id, sent.node_id)
        if key in self._runs:
            self._runs.move_to_end(key)
            return self._runs[key]
        theirs = {k: v for k, v in sent.node_config.items() if k != "worker-socket"}
        if theirs != self.node_config:  # the worker's own config rules; a mismatch is likely a mistake
            LOG.warning(
                "run %d: the SuperNode's node config %s is not the worker's %s", key[0], theirs, self.node_config
            )
        context = Context(
            run_id=sent.run_id,
            node_id=sent.node_id,
            node_config=dict(self.node_config),
            state=sent.state,
            run_config=dict(sent.run_config),
            series_id=sent.series_id,
        )
        self._runs[key] = context
        while len(self._runs) > self.limit:
            self._runs.popitem(last=False)
        return context


def load_app() -> ClientApp:
    """``clients.app.app``, the real ClientApp with its mods (imported once: torch and all)."""
    app = importlib.import_module("clients.app").app
    if not isinstance(app, ClientApp):
        raise TypeError(f"clients.app.app is a {type(app).__name__}, not a ClientApp")
    return app


def run_app(app: ClientApp, message: Message, context: Context) -> Message | Error:
    """The app's reply; an exception outside its mods (an unknown message type) becomes the error
    Flower's ``flwr-clientapp`` would send for it."""
    try:
        return app(message, context)
    except Exception as exc:  # the app's own mod already turns handler failures into replies
        LOG.exception("the ClientApp raised")
        return Error(code=wire.APP_ERROR, reason=f"{type(exc)}:<'{exc}'>")


def handle(conn: socket.socket, app: ClientApp, contexts: Contexts) -> None:
    """Serve one connection: read a request, run the app, write the reply. Nothing raises out of here
    except a stop signal: a malformed request gets an error reply, a vanished peer is logged."""
    start = time.perf_counter()
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        frames = wire.recv_frames(conn, wire.REQUEST_FRAMES)
        if frames is None:
            LOG.debug("probe")
            return
        message, sent = wire.decode_request(frames)
    except (wire.WireError, OSError) as exc:
        LOG.warning("malformed request: %s", exc)
        _reply(conn, Error(code=wire.APP_ERROR, reason=f"worker: malformed request: {exc}"), None)
        return
    context = contexts.get(sent)
    reply = run_app(app, message, context)
    _reply(conn, reply, context)
    error = reply if isinstance(reply, Error) else reply.error if reply.has_error() else None
    outcome = f"error {error.code}: {error.reason}" if error is not None else "ok"
    LOG.info(
        "run %d node %d %s: %s in %.3f s",
        sent.run_id,
        sent.node_id,
        message.metadata.message_type,
        outcome,
        time.perf_counter() - start,
    )


def _reply(conn: socket.socket, reply: Message | Error, context: Context | None) -> None:
    """Write a reply; a peer that went away (its process ended) is logged, not raised."""
    try:
        wire.send_frames(conn, wire.encode_reply(reply, context))
    except OSError as exc:
        LOG.warning("could not send the reply: %s", exc)


def bind(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600; a stale socket file there is replaced, a live
    worker's is not (``SystemExit``), nor any other file."""
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise SystemExit(f"{path} exists and is not a socket")
        if wire.answers(str(path)):
            raise SystemExit(f"another worker listens on {path}")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no window in which the socket is open to others
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    path.chmod(0o600)
    server.listen(16)
    return server


def serve(path: Path, node_config: dict[str, Any]) -> None:
    """Import the app, listen on ``path`` (so a connectable worker is a ready one), serve until a
    stop signal (SIGTERM, SIGINT, SIGHUP), then remove the socket if it is still ours."""
    start = time.perf_counter()
    app = load_app()
    LOG.info("clients.app imported in %.2f s; node config %s", time.perf_counter() - start, node_config)
    contexts = Contexts(node_config)
    server = bind(path)
    inode = path.stat().st_ino
    LOG.info("listening on %s (pid %d)", path, os.getpid())
    try:
        while True:
            conn, _ = server.accept()
            with conn:
                handle(conn, app, contexts)
    finally:
        server.close()
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:  # not a successor's socket
                path.unlink()
        LOG.info("stopped")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def parse_node_config(text: str) -> dict[str, Any]:
    """A ``--node-config`` string, parsed by Flower's own parser (as ``flower-supernode`` does)."""
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text])) if text.strip() else {}
    except Exception as exc:  # click.ClickException for a malformed string
        raise SystemExit(f"invalid --node-config {text!r}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m clients.worker --socket PATH --node-config '...' [--log FILE]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", type=Path, required=True, help="the Unix socket to listen on")
    p.add_argument("--node-config", default="", help="the device's node config, as given to flower-supernode")
    p.add_argument("--log", type=Path, default=None, help="log file (default: the socket's path with .log)")
    args = p.parse_args(argv)
    path = args.socket.resolve()
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        print(f"socket path longer than {SOCKET_PATH_MAX} bytes: {path}", file=sys.stderr)
        return 2
    node_config = parse_node_config(args.node_config)
    log = args.log or path.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=log, level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _stop)
    serve(path, node_config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
