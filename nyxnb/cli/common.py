"""Helpers shared by every ``nyxnb`` command: ``--json``, the store, output and tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click
from sqlalchemy.exc import DatabaseError

from nyxnb import events as ev
from nyxnb.errors import NyxError, redact
from nyxnb.store.database import Store, open_store, store_error
from nyxnb.store.models import COMPLETED, FAILED, PAUSED


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(dict)["json"] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    expose_value=False,
    callback=_set_json,
    is_eager=True,
    help="Machine-readable JSON output.",
)


def with_json(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json`` to a command."""
    return json_option(fn)


def get_store(ctx: click.Context) -> Store:
    """Open the store named by ``--db`` / ``NYXNB_DB_URL`` / the default rule (once per call)."""
    obj = ctx.ensure_object(dict)
    if "store" not in obj:
        obj["store"] = open_store(obj.get("db"))
    store: Store = obj["store"]
    return store


def fail_line(ctx: click.Context, exc: NyxError | DatabaseError) -> NoReturn:
    """Print an error as one redacted line on stderr (a JSON object with ``--json``), exit 1."""
    if isinstance(exc, DatabaseError):
        store = ctx.ensure_object(dict).get("store")
        exc = store_error(exc, store.engine if store is not None else None)
    line = " ".join(redact(str(exc)).split())  # one line, whatever the driver wrote
    if wants_json(ctx):
        hint = " ".join(redact(getattr(exc, "hint", "")).split()) or None
        error = {"error": line, "kind": type(exc).__name__, "hint": hint}
        click.echo(json.dumps(error), err=True)
    else:
        click.echo(f"error: {line}", err=True)
    sys.exit(1)


def wants_json(ctx: click.Context) -> bool:
    """True when ``--json`` was given globally or on the command."""
    return bool(ctx.ensure_object(dict).get("json"))


def emit(ctx: click.Context, data: Any, text: str | Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``--json``, else the human text."""
    if wants_json(ctx):
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        click.echo(text() if callable(text) else text)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A plain aligned text table."""
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def stream_events(ctx: click.Context, events: Iterator[ev.Event]) -> None:
    """Print events (JSON lines or text progress) and exit 0 only if the workflow completed.

    Ctrl-C stops the run cooperatively: items in flight are kept, the workflow is paused.
    """
    from nyxnb.notebook.progress import TextProgress

    show = (lambda e: click.echo(e.to_json())) if wants_json(ctx) else TextProgress()
    status, workflow_id = FAILED, ""
    try:
        for event in events:
            show(event)
            workflow_id = event.workflow_id
            if isinstance(event, ev.WorkflowCompleted):
                status = COMPLETED
            elif isinstance(event, ev.WorkflowPaused):
                status = PAUSED
    except KeyboardInterrupt:
        click.echo(f"interrupted: paused; continue with: nyxnb resume {workflow_id}", err=True)
        sys.exit(130)
    sys.exit(0 if status == COMPLETED else 1)
