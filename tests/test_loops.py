"""The loops nyxnb owns wait as long as a timer asks, rounded up once to whole milliseconds."""

from __future__ import annotations

import selectors
import sys

import pytest

from nyxnb.engine import api, loops

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll is Linux's")


class _Recorder:
    """Stands in for the selector's poll object and records the timeout it is handed."""

    def __init__(self) -> None:
        self.timeouts: list[object] = []

    def poll(self, timeout: object = None, *_: object) -> list[object]:
        self.timeouts.append(timeout)
        return []


def _handed(selector: selectors.BaseSelector, seconds: float) -> object:
    recorder, real = _Recorder(), selector._selector  # type: ignore[attr-defined]
    selector._selector = recorder  # type: ignore[attr-defined]  # the stdlib's poll object
    try:
        selector.select(seconds)
    finally:
        selector._selector = real  # type: ignore[attr-defined]
    return recorder.timeouts[-1]


@linux
def test_the_default_epoll_selector_hands_epoll_a_float_it_rounds_up_again() -> None:
    """Why: 8.5 ms becomes 0.009000000000000001 s, which ``epoll.poll`` turns into 10 ms."""
    handed = _handed(selectors.EpollSelector(), 0.0085)
    assert isinstance(handed, float) and handed > 9 / 1000


@linux
@pytest.mark.parametrize(("seconds", "ms"), [(0.0085, 9), (0.0001, 1), (0.009, 9), (0.0, 0)])
def test_nyxnb_loops_hand_poll_whole_milliseconds_rounded_once(seconds: float, ms: int) -> None:
    loop = loops.new_event_loop()
    try:
        selector = loop._selector  # type: ignore[attr-defined]
        assert isinstance(selector, selectors.PollSelector)
        assert _handed(selector, seconds) == ms
    finally:
        loop.close()


def test_the_sync_facade_and_the_cli_run_on_nyxnb_loops() -> None:
    ours = loops.new_event_loop()
    try:
        selector = type(ours._selector)  # type: ignore[attr-defined]
    finally:
        ours.close()
    assert type(api._LoopThread.loop()._selector) is selector  # type: ignore[attr-defined]
    assert loops.run(_answer()) == 42


async def _answer() -> int:
    return 42
