"""``nyxnb export``: a step's results as a table (CSV, JSONL or Parquet), streamed to a file."""

from __future__ import annotations

import click

from nyxnb.cli.common import emit, get_store, with_json
from nyxnb.reports.table import export_table


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--step", help="The step to export (default: the last fan-out step).")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="The file to write: .csv, .jsonl or .parquet.",
)
@click.option("--tenant", help="Only if WF belongs to this tenant.")
@with_json
@click.pass_context
def export(
    ctx: click.Context, workflow_id: str, step: str | None, out: str, tenant: str | None
) -> None:
    """Write one row per item of WF's step: key, input columns, output fields, provider, cost."""
    store = get_store(ctx)
    rows = export_table(store, workflow_id, out, step, tenant_id=store.tenant_id(tenant))
    emit(ctx, {"rows": rows, "out": out}, f"wrote {rows} rows to {out}")


COMMANDS = (export,)
