"""``server.rounds.send_and_wait``: replies pulled until all came or the timeout passed (no fixed sleep)."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, RecordDict

from server.exchange import send_and_wait

pytestmark = pytest.mark.usefixtures("flower_task")


class SlowGrid:
    """Pretends to be a grid: replies to the message ids in ``answered`` after ``delay`` seconds."""

    def __init__(self, answered: set[str], delay: float) -> None:
        self.answered, self.delay, self.pushed_at, self.pulls = answered, delay, 0.0, 0
        self.messages: dict[str, Message] = {}

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pushed_at = time.monotonic()
        ids = [f"m{i}" for i in range(len(messages))]
        for mid, msg in zip(ids, messages, strict=True):
            msg.metadata.__dict__["_message_id"] = mid
            self.messages[mid] = msg
        return ids

    def pull_messages(self, message_ids: set[str]) -> list[Message]:
        self.pulls += 1
        if time.monotonic() - self.pushed_at < self.delay:
            return []
        ready = [i for i in sorted(message_ids) if i in self.answered]
        return [Message(RecordDict({}), reply_to=self.messages[i]) for i in ready]


def _messages(n: int) -> list[Message]:
    return [Message(RecordDict({}), dst_node_id=10 + i, message_type="query") for i in range(n)]


def test_all_replies_come_back_shortly_after_they_exist():
    grid = SlowGrid({"m0", "m1"}, delay=0.2)
    start = time.monotonic()
    replies = send_and_wait(grid, _messages(2), timeout=10.0)  # type: ignore[arg-type]
    took = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.2 <= took < 0.5  # polled every 50 ms: not Flower's 3 s sleep, not the 10 s timeout


def test_a_missing_reply_ends_the_wait_at_the_timeout_with_what_came():
    grid = SlowGrid({"m0"}, delay=0.0)
    start = time.monotonic()
    replies = send_and_wait(grid, _messages(2), timeout=0.3)  # type: ignore[arg-type]
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.3 <= time.monotonic() - start < 0.6 and grid.pulls >= 3
