"""The wire between the thin ClientApp (``clients.entry``) and a device's worker (``clients.worker``).

One request per connection on a Unix domain socket. Every frame is an 8-byte big-endian length and
that many bytes, each a protobuf of Flower's own (``flwr.common.serde``), never a pickle:

- request: the Message (``message_to_proto``, content and metadata) and the SuperNode's Context
  (``context_to_proto``: run id, node id, run config, its state);
- reply: the reply Message (content or error; only those are used: the entry builds the reply
  with ``Message(..., reply_to=msg)`` itself) and the worker's Context, whose state the entry
  hands back to the SuperNode (an empty frame where the worker had none, e.g. a malformed request).

A connection closed before its first byte is a probe (``answers``), not a request. This module
imports Flower's serialization only, no torch: the entry process stays thin.
"""

from __future__ import annotations

import socket
import struct

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
)
from flwr.common.serde_utils import error_from_proto, error_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

HEADER = struct.Struct(">Q")
MAX_FRAME = 1 << 30  # 1 GiB: far above any model this app sends, far below what would exhaust a device
REQUEST_FRAMES = 2
APP_ERROR = ErrorCode.CLIENT_APP_RAISED_EXCEPTION  # the code Flower gives a ClientApp's exception


class WireError(ValueError):
    """A frame or a protobuf that does not decode, a short read, a frame over ``MAX_FRAME``."""


def send_frames(sock: socket.socket, frames: list[bytes]) -> None:
    """Write ``frames``, each prefixed by its length."""
    for frame in frames:
        sock.sendall(HEADER.pack(len(frame)))
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; ``WireError`` if the peer closes first."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise WireError(f"connection closed after {got} of {size} bytes")
        got += n
    return bytes(buf)


def recv_frames(sock: socket.socket, count: int) -> list[bytes] | None:
    """``count`` frames; None if the peer closed before sending a byte (a probe). Raises ``WireError``
    for a short read or a frame over ``MAX_FRAME`` (read before allocating: a bad length costs nothing)."""
    frames: list[bytes] = []
    for index in range(count):
        first = sock.recv(HEADER.size)
        if not first and index == 0:
            return None
        head = first + (_recv_exact(sock, HEADER.size - len(first)) if 0 < len(first) < HEADER.size else b"")
        if len(head) != HEADER.size:
            raise WireError(f"connection closed before frame {index + 1} of {count}")
        (size,) = HEADER.unpack(head)
        if size > MAX_FRAME:
            raise WireError(f"frame {index + 1} announces {size} bytes, more than {MAX_FRAME}")
        frames.append(_recv_exact(sock, size))
    return frames


def encode_request(message: Message, context: Context) -> list[bytes]:
    """The request frames of ``message`` and the SuperNode's ``context``."""
    return [message_to_proto(message).SerializeToString(), context_to_proto(context).SerializeToString()]


def decode_request(frames: list[bytes]) -> tuple[Message, Context]:
    """(message, SuperNode context) of a request; ``WireError`` if either does not decode."""
    if len(frames) != REQUEST_FRAMES:
        raise WireError(f"a request has {REQUEST_FRAMES} frames, got {len(frames)}")
    try:
        proto = ProtoMessage.FromString(frames[0])
        message = message_from_proto(proto)
        context = context_from_proto(ProtoContext.FromString(frames[1]))
    except Exception as exc:  # protobuf's DecodeError, or a record that does not convert
        raise WireError(f"undecodable request: {type(exc).__name__}: {exc}") from exc
    if not proto.HasField("content") or not message.metadata.message_type:
        raise WireError("the request's message has no content or no message type")
    return message, context


def encode_reply(reply: Message | Error, context: Context | None) -> list[bytes]:
    """The reply frames: a Message (content or error), or a bare ``Error`` where there is no message
    to reply to (a malformed request), then the worker's context (empty frame if None)."""
    proto = ProtoMessage(error=error_to_proto(reply)) if isinstance(reply, Error) else message_to_proto(reply)
    return [proto.SerializeToString(), context_to_proto(context).SerializeToString() if context else b""]


def decode_reply(frames: list[bytes]) -> tuple[RecordDict | Error, RecordDict | None]:
    """(the reply's content or error, the worker's context state or None); ``WireError`` otherwise."""
    if len(frames) != REQUEST_FRAMES:
        raise WireError(f"a reply has {REQUEST_FRAMES} frames, got {len(frames)}")
    try:
        proto = ProtoMessage.FromString(frames[0])
        body: RecordDict | Error
        if proto.HasField("error"):
            body = error_from_proto(proto.error)
        elif proto.HasField("content"):
            body = recorddict_from_proto(proto.content)
        else:
            raise WireError("the reply holds neither content nor an error")
        state = context_from_proto(ProtoContext.FromString(frames[1])).state if frames[1] else None
    except WireError:
        raise
    except Exception as exc:  # protobuf's DecodeError, or a record that does not convert
        raise WireError(f"undecodable reply: {type(exc).__name__}: {exc}") from exc
    return body, state


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    """A connected socket to the worker at ``path`` (blocking afterwards); OSError if none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)  # a training step may take long: the reply is waited for
    except OSError:
        sock.close()
        raise
    return sock


def answers(path: str, timeout: float = 2.0) -> bool:
    """True iff a worker accepts connections on ``path`` (a probe: connect, close, nothing sent)."""
    try:
        connect(path, timeout).close()
    except OSError:
        return False
    return True
