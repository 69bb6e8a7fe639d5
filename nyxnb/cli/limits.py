"""``nyxnb run --timeout/--limit/--rpm/--tpm``: rate limits and timeouts from the command line.

They are written into the spec's ``defaults`` (``timeouts``, ``limits``) before the run starts,
so they are recorded with the run and a resume uses them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from nyxnb.spec import LimitSpec, WorkflowSpec, load_spec

_ALL = ("anthropic", "google", "openai")
_FIELDS = ("rpm", "tpm", "concurrency")


def parse_timeout(text: str) -> tuple[str, float]:
    """``30`` -> ("default", 30.0); ``openai=20`` -> ("openai", 20.0)."""
    name, _, seconds = text.rpartition("=")
    try:
        value = float(seconds)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: give SECONDS or PROVIDER=SECONDS, e.g. --timeout 30 or --timeout openai=20",
            param_hint="--timeout",
        ) from None
    if not 0 < value <= 3600:
        raise click.BadParameter(f"{text!r}: seconds must be in (0, 3600]", param_hint="--timeout")
    return name or "default", value


def parse_limit(text: str) -> tuple[str, LimitSpec]:
    """``openai:rpm=500,tpm=200000`` -> ("openai", LimitSpec(rpm=500, tpm=200000))."""
    target, sep, body = text.rpartition(":") if "=" in text else ("", "", "")
    values: dict[str, Any] = {}
    for part in body.split(",") if sep else ():
        key, _, value = part.partition("=")
        if key.strip() not in _FIELDS or not value:
            break
        values[key.strip()] = value.strip()
    else:
        if target and values:
            try:
                return target, LimitSpec.model_validate(values)
            except ValueError:
                pass
    raise click.BadParameter(
        f"{text!r}: give PROVIDER:rpm=N,tpm=N,concurrency=N (numbers > 0), "
        "e.g. --limit openai:rpm=500,tpm=200000",
        param_hint="--limit",
    )


def with_limits(
    source: str | Path,
    timeouts: tuple[str, ...],
    limits: tuple[str, ...],
    rpm: float | None,
    tpm: float | None,
) -> str | Path | WorkflowSpec:
    """The spec at ``source`` with the command line's timeouts and limits in its defaults."""
    if not (timeouts or limits or rpm or tpm):
        return source
    given = [parse_limit(text) for text in limits]  # bad flags fail before the spec is read
    seconds = [parse_timeout(t) for t in timeouts]
    spec = load_spec(source)
    chosen = dict(spec.defaults.limits)
    if rpm or tpm:
        for name in _ALL:
            old = chosen.get(name) or LimitSpec()
            chosen[name] = old.model_copy(update={"rpm": rpm or old.rpm, "tpm": tpm or old.tpm})
    chosen.update(given)
    timeout_s = dict(spec.defaults.timeouts) | dict(seconds)
    defaults = spec.defaults.model_copy(update={"limits": chosen, "timeouts": timeout_s})
    return spec.model_copy(update={"defaults": defaults})
