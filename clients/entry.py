"""The app's ClientApp component (``clients.entry:app``): thin, so a per-message process starts fast.

Flower 1.41 starts a new ``flwr-clientapp`` process for every message of a deployed run. That process
imports this module, which imports Flower only (no torch, no ``clients.app``). Then, for every
message type, whatever the app registers:

- with ``worker-socket`` in the node config (``deploy/fleet.py up`` sets it), the message and the
  SuperNode's context go to that device's long-lived worker (``clients.worker``), which runs the
  real ClientApp; the reply is built here with ``Message(content or error, reply_to=msg)``, so its
  ids and metadata are Flower's, and the worker's context state goes back to the SuperNode;
- without it (simulation, tests, a SuperNode run without a worker) ``clients.app`` is imported
  here, on the first message, and called directly: the same behaviour as naming it the component;
- with a worker that does not answer, the message runs here as well (logged); a worker that
  accepted the request but failed to reply yields an error reply (the device drops out of the
  round, as it would had it crashed), not a second run of the message.
"""

from __future__ import annotations

import importlib
from logging import WARNING

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from clients import wire

_FULL: ClientApp | None = None


def full_app() -> ClientApp:
    """``clients.app.app``, imported on first use (torch and the rest come with it)."""
    global _FULL
    if _FULL is None:
        app = importlib.import_module("clients.app").app
        if not isinstance(app, ClientApp):
            raise TypeError(f"clients.app.app is a {type(app).__name__}, not a ClientApp")
        _FULL = app
    return _FULL


def forward(path: str, message: Message, context: Context) -> Message | None:
    """The worker's reply to ``message``; None if no worker answers at ``path`` (then nothing was sent).
    The worker's context state replaces the SuperNode's (which Flower stores after this process)."""
    try:
        conn = wire.connect(path)
    except OSError as exc:
        log(WARNING, "fedadmp worker %s unreachable (%s): running the ClientApp in this process", path, exc)
        return None
    try:
        with conn:
            wire.send_frames(conn, wire.encode_request(message, context))
            frames = wire.recv_frames(conn, wire.REQUEST_FRAMES)
            if frames is None:
                raise wire.WireError("the worker closed the connection without a reply")
            body, state = wire.decode_reply(frames)
    except (OSError, wire.WireError) as exc:
        reason = f"fedadmp worker {path} failed: {type(exc).__name__}: {exc}"
        log(WARNING, reason)
        return Message(Error(code=wire.APP_ERROR, reason=reason), reply_to=message)
    if state is not None:
        context.state = state
    return Message(body, reply_to=message)  # content, or the worker's error


class ForwardingClientApp(ClientApp):
    """A ClientApp for every message type: forwarded to the device's worker, or run by ``clients.app``."""

    def __call__(self, message: Message, context: Context) -> Message:
        """The reply to ``message`` (see the module docstring for who computes it)."""
        path = str(context.node_config.get("worker-socket", ""))
        if path:
            reply = forward(path, message, context)
            if reply is not None:
                return reply
        return full_app()(message, context)


app = ForwardingClientApp()
