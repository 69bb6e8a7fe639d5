"""A fan-out's requests: built from the rendered prompts when each is used, not held.

Only the prompts are kept (a 100,000-row dataset would otherwise hold 100,000 request objects for
the whole run); the prefix every prompt shares is marked for prompt caching.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import overload

from nyxnb.engine.context import RunContext
from nyxnb.engine.durable.rows import StepRow
from nyxnb.providers.base import CompletionRequest

#: A common prefix of the items' prompts shorter than this is not worth a cache breakpoint.
MIN_SHARED_PREFIX_CHARS = 1024


def fan_out_requests(runner: RunContext, step: StepRow, prompts: list[str]) -> FanOutRequests:
    """The requests of a fan-out's items, the prefix their prompts share marked for caching.

    The lead builds them from the rendered prompts, a helping worker from the stored inputs:
    both here, so a helper's calls read the same prompt cache as the lead's.
    """
    return FanOutRequests(runner, step, prompts)


class FanOutRequests(Sequence[CompletionRequest]):
    """A fan-out's requests, each built when it is used: only the prompts are kept.

    (A 100,000-row dataset would otherwise hold 100,000 request objects for the whole run.)
    The prefix every prompt shares (cut at a whitespace) is marked for prompt caching when it is
    at least :data:`MIN_SHARED_PREFIX_CHARS` long.
    """

    def __init__(self, runner: RunContext, step: StepRow, prompts: list[str]) -> None:
        self.prompts = prompts
        self.shared_prefix = _shared_prefix(prompts)
        # every item's request is this one with its own prompt (built once: it is per step)
        self._base = dataclasses.replace(runner.request(step, ""), shared_prefix=self.shared_prefix)

    def __len__(self) -> int:
        return len(self.prompts)

    @overload
    def __getitem__(self, index: int) -> CompletionRequest: ...

    @overload
    def __getitem__(self, index: slice) -> list[CompletionRequest]: ...

    def __getitem__(self, index: int | slice) -> CompletionRequest | list[CompletionRequest]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._base.with_prompt(self.prompts[index])


def _shared_prefix(prompts: list[str]) -> int:
    """Where the prompt prefix every item shares ends (0: none worth a cache breakpoint)."""
    if len(prompts) < 2:
        return 0
    common = os.path.commonprefix(prompts)
    cut = max(common.rfind(" "), common.rfind("\n")) + 1
    return cut if cut >= MIN_SHARED_PREFIX_CHARS else 0
