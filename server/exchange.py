"""Exchanges with the fleet through a Flower ``Grid``: send and wait, and the bytes messages carry."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from strategies import protocol as P


def send_and_wait(grid: Grid, messages: list[Message], timeout: float, poll: float = 0.05) -> list[Message]:
    """Push ``messages`` and pull their replies every ``poll`` seconds until all came or ``timeout`` passed.

    What ``Grid.send_and_receive`` does, without its fixed 3 s sleep between pulls in Flower 1.41's
    deployed grid (``superlink/grid/http_grid.py``): a deployed exchange would otherwise wait up to 3 s
    after its last reply. A pull of replies not yet there is one cheap call to the SuperLink."""
    waiting = set(grid.push_messages(messages))
    end = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies += pulled
        waiting -= {m.metadata.reply_to_message_id for m in pulled}
        if not waiting or time.monotonic() >= end:
            break
        time.sleep(poll)
    return replies


def payload_bytes(messages: Iterable[Message]) -> int:
    """Array bytes carried by the messages that did not fail."""
    return sum(P.content_bytes(m.content) for m in messages if not m.has_error())


def message_bytes(message: Message) -> int:
    """Bytes a message carries: its arrays, and the bytes values of its config records (SecAgg+'s keys,
    key shares and masked vectors travel there); 0 for an error reply."""
    if message.has_error():
        return 0
    total = P.content_bytes(message.content)
    for record in message.content.values():
        if isinstance(record, ConfigRecord):
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                total += sum(len(v) for v in items if isinstance(v, bytes))
    return total
