"""``nyxnb cancel-batch``: cancel a workflow's provider batches (``nyxnb batch`` is papermill's)."""

from __future__ import annotations

import click

from nyxnb.cli.common import emit, get_store, with_json
from nyxnb.engine import loops
from nyxnb.engine.batch.submit import cancel_batches


@click.command("cancel-batch")
@click.argument("workflow_id", metavar="WF")
@with_json
@click.pass_context
def cancel_batch(ctx: click.Context, workflow_id: str) -> None:
    """Cancel WF's open provider batches; `nyxnb resume WF` then ingests what finished."""
    canceled = loops.run(cancel_batches(get_store(ctx), workflow_id))
    rows = [{"provider": p, "batch_id": b} for p, b in canceled]
    lines = [f"cancel requested: {p} batch {b}" for p, b in canceled]
    emit(ctx, rows, "\n".join(lines) or f"no open provider batch in {workflow_id}")


COMMANDS = (cancel_batch,)
