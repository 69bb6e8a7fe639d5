"""The flags shared by ``nyxnb run`` and ``nyxnb submit``: tenant, project and run overrides.

:func:`run_flags` adds them to a command and hands the command one :class:`RunFlags` (as
``flags``) instead of a dozen keyword arguments, so both commands accept the same overrides and
spell them the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from nyxnb.cli.limits import with_limits
from nyxnb.engine.workflows import RunOptions
from nyxnb.spec import WorkflowSpec


@dataclass(frozen=True)
class RunFlags:
    """What the command line says about one run."""

    tenant: str
    project: str
    provider: str | None
    concurrency: int | None
    no_cache: bool
    max_cost: float | None
    timeouts: tuple[str, ...]
    limits: tuple[str, ...]
    rpm: float | None
    tpm: float | None
    batch: bool

    @property
    def cache(self) -> bool | None:
        """``False`` with ``--no-cache``; otherwise the spec decides."""
        return False if self.no_cache else None

    @property
    def options(self) -> RunOptions:
        """The run overrides (``None`` keeps what the spec says)."""
        batch = True if self.batch else None
        return RunOptions(self.provider, self.concurrency, self.cache, self.max_cost, batch)

    def spec(self, source: str | Path) -> str | Path | WorkflowSpec:
        """The spec at ``source`` with the timeouts and limits of the command line."""
        return with_limits(source, self.timeouts, self.limits, self.rpm, self.tpm)


_OPTIONS = (
    click.option("--tenant", required=True, help="Tenant slug."),
    click.option("--project", required=True, help="Project name (in that tenant)."),
    click.option("--provider", help="Run every step on this provider only (e.g. offline)."),
    click.option("--concurrency", type=click.IntRange(1, 256), help="Fan-out items in flight."),
    click.option("--no-cache", is_flag=True, help="Do not use the response cache."),
    click.option(
        "--max-cost",
        type=click.FloatRange(min=0, min_open=True),
        help="Budget in USD (> 0); stops before exceeding it.",
    ),
    click.option(
        "--timeout",
        "timeouts",
        multiple=True,
        metavar="[PROVIDER=]SECONDS",
        help="Seconds a call may wait for its first byte (all providers, or one); repeatable.",
    ),
    click.option(
        "--limit",
        "limits",
        multiple=True,
        metavar="PROVIDER:rpm=N,tpm=N,concurrency=N",
        help="Rate limits of a provider (or provider:model), instead of learning them; repeatable.",
    ),
    click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests/min, all."),
    click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens/min, all."),
    click.option("--batch", is_flag=True, help="Fan-outs through the batch API (half price)."),
)
_NAMES = tuple(f.name for f in fields(RunFlags))


def run_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the run flags to a click command; it receives them as ``flags: RunFlags``."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        flags = RunFlags(**{name: kwargs.pop(name) for name in _NAMES})
        return fn(*args, flags=flags, **kwargs)

    for option in reversed(_OPTIONS):
        command = option(command)
    return command
