"""The governor's buckets: re-tuned from provider headers through aiolimiter's public API only."""

from __future__ import annotations

import ast
import asyncio
import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from nyxnb.engine.calls import governor
from nyxnb.engine.calls.governor import Bucket


def test_governor_touches_no_private_attribute_of_aiolimiter() -> None:
    tree = ast.parse(inspect.getsource(governor))
    private = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    }
    assert private == set(), private


def test_a_waiter_moves_to_the_new_rate_when_the_provider_raises_it() -> None:
    async def scenario() -> None:
        bucket = Bucket(1)  # one request a minute: a second request waits ~60 s
        await bucket.acquire(1)
        waiter = asyncio.ensure_future(bucket.acquire(1))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        bucket.retune(6000)  # the headers say 6,000 rpm
        async with asyncio.timeout(10):  # far below the old rate's 60 s
            await waiter

    asyncio.run(scenario())


def test_a_new_rate_carries_the_spent_level_over() -> None:
    async def scenario() -> None:
        bucket = Bucket(60)  # one a second, a bucket of one
        await bucket.acquire(1)  # full
        bucket.retune(30)  # slower: the spent request still counts
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await bucket.acquire(1)  # would need ~2 s at the new rate
        assert bucket.level() > 0.5

    asyncio.run(scenario())


def test_what_the_provider_says_is_spent_is_waited_for() -> None:
    async def scenario() -> None:
        bucket = Bucket(60)  # a bucket of one, refilled in 1 s
        bucket.spend_to(5)  # more than is free: never raises the budget
        await bucket.acquire(1)
        bucket = Bucket(1)  # refilled in 60 s
        bucket.spend_to(0)  # the provider says nothing remains
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await bucket.acquire(1)

    asyncio.run(scenario())


def test_cancelled_waiters_leave_the_bucket_usable() -> None:
    async def scenario() -> None:
        bucket = Bucket(1)
        await bucket.acquire(1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await bucket.acquire(1)
        bucket.retune(6000)
        async with asyncio.timeout(10):
            await bucket.acquire(1)

    asyncio.run(scenario())


def test_processes_first_using_a_bucket_at_once_share_one_row(store) -> None:
    """Eight budgets (as eight processes would) lease a fresh key at the same instant: one row
    is created, none fails on the race, and together they are granted at most its one-second
    burst (10 at 600 rpm)."""
    from nyxnb.engine.calls.budget import SharedBudget
    from nyxnb.store.models import RateBucket

    budgets = [SharedBudget(store) for _ in range(8)]
    start = threading.Barrier(len(budgets))

    def lease(budget: SharedBudget) -> float:
        start.wait()
        return budget._lease("openai:gpt-4o-mini:requests", 2.0, 1.0, 600.0)[0]

    began = time.monotonic()
    with ThreadPoolExecutor(len(budgets)) as pool:
        granted = list(pool.map(lease, budgets))
    refill = (time.monotonic() - began) * 600 / 60
    with store.session() as s:
        rows = s.scalars(select(RateBucket)).all()
    assert len(rows) == 1
    assert 10.0 - 1e-6 <= sum(granted) <= 10.0 + refill + 2.0  # the burst, and what refilled
