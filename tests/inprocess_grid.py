"""A Flower ``Grid`` that delivers every message to the real ClientApp in this process (no Ray).

Each node keeps its own ``Context`` (partition id = device id), as a SuperNode would, so server
phases, strategies and client handlers run end to end in milliseconds and deterministically.
Replies wait for ``pull_messages`` as on a real grid. ``replies(message, reply)`` lets a test replace
a node's reply, or drop it (None), on the way back.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid

from clients.app import app as client_app

NODE_BASE = 100  # node id of device i is NODE_BASE + i
CACHE = Path(tempfile.mkdtemp(prefix="fedadmp-test-devices-"))  # the devices' teacher store (content-addressed)
atexit.register(shutil.rmtree, CACHE, True)  # gone with the test session


class InProcessGrid(Grid):
    """Nodes ``NODE_BASE + i`` for devices ``i`` in ``range(devices)``; ``claims`` overrides ids."""

    def __init__(
        self,
        devices: int,
        claims: dict[int, int] | None = None,
        replies: Callable[[Message, Message], Message | None] | None = None,
    ) -> None:
        self.contexts = {
            NODE_BASE + i: Context(
                run_id=1,
                node_id=NODE_BASE + i,
                state=RecordDict(),
                run_config={},
                node_config={"partition-id": (claims or {}).get(i, i), "cache-dir": str(CACHE)},
            )
            for i in range(devices)
        }
        self.tamper = replies or (lambda _msg, reply: reply)
        self.sent: list[Message] = []
        self.waiting: list[tuple[str, Message]] = []  # (id of the message replied to, reply)

    def get_node_ids(self) -> Iterable[int]:
        """Every node of the fleet."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message through the ClientApp of its node at once; ``replies`` may alter or drop
        the reply, which waits for ``pull_messages``. Returns the messages' ids, as Flower does."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # what Flower's grids set on push
            self.sent.append(msg)
            delivered = message_from_proto(message_to_proto(msg))  # a transport's copy, never a shared object
            reply = self.tamper(msg, client_app(delivered, self.contexts[msg.metadata.dst_node_id]))
            if reply is not None:
                self.waiting.append((msg.metadata.message_id, reply))
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies held for ``message_ids`` (each once)."""
        wanted = set(message_ids)
        out = [reply for to, reply in self.waiting if to in wanted]
        self.waiting = [(to, reply) for to, reply in self.waiting if to not in wanted]
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull every reply there is (all of them are there at once)."""
        return self.pull_messages(self.push_messages(messages))

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        """Not needed in process."""

    @property
    def run(self):  # type: ignore[no-untyped-def, override]
        """Not needed in process."""
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        """Not needed: the server builds ``Message`` objects itself."""
        raise NotImplementedError
