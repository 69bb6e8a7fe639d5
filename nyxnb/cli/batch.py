"""``nyxnb batch NOTEBOOK --params FILE``: papermill once per parameter set, then a result table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from nyxnb.cli.common import emit, get_store, table, wants_json, with_json
from nyxnb.notebook.batch import BatchResult, load_param_sets, run_batch


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


@click.command()
@click.argument("notebook", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--params",
    "params_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML/JSON list of parameter sets, or CSV with a header of names.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("batch-out"),
    show_default=True,
    help="Folder for the executed notebooks (kept, failed ones too).",
)
@click.option("--kernel", "kernel_name", help="Kernel name (default: the notebook's).")
@click.option("--cell-timeout", type=float, help="Seconds a cell may run (default: no limit).")
@with_json
@click.pass_context
def batch(
    ctx: click.Context,
    notebook: Path,
    params_file: Path,
    out_dir: Path,
    kernel_name: str | None,
    cell_timeout: float | None,
) -> None:
    """Run a notebook once per parameter set (papermill); print a table.

    Runs NOTEBOOK once per parameter set of FILE and keeps every executed notebook in --out,
    failed ones with papermill's error banner.  Keys never go in FILE: they come from the
    environment, which each kernel inherits; the store (--db / NYXNB_DB_URL) reaches the kernels
    the same way.  Exits 0 only when every run succeeded.
    """
    sets = load_param_sets(params_file)
    db = ctx.ensure_object(dict).get("db")
    quiet = wants_json(ctx)

    def started(i: int, total: int, params: dict[str, Any]) -> None:
        if not quiet:
            click.echo(f"[{i}/{total}] {notebook.name} {_params_text(params)}")

    def finished(r: BatchResult) -> None:
        if not quiet:
            tail = f": {r.error}" if r.error else ""
            click.echo(f"      {r.status} in {r.seconds:.1f}s -> {r.output}{tail}")

    results = run_batch(
        notebook,
        sets,
        out_dir,
        kernel_name=kernel_name,
        cell_timeout=cell_timeout,
        env={"NYXNB_DB_URL": db} if db else None,
        on_start=started,
        on_result=finished,
        store=get_store(ctx),
    )
    failed = sum(not r.ok for r in results)
    emit(
        ctx,
        [r.to_dict() for r in results],
        lambda: (
            _results_table(results)
            + f"\n{len(results) - failed} ok, {failed} failed; notebooks in {out_dir}"
        ),
    )
    sys.exit(1 if failed else 0)


COMMANDS = [batch]


def _results_table(results: list[BatchResult]) -> str:
    rows = [
        {
            "#": r.index,
            "status": r.status,
            "workflow": ", ".join(r.workflow_ids) or "-",
            "seconds": f"{r.seconds:.1f}",
            "parameters": _params_text(r.parameters),
            "output": str(r.output),
            "error": (r.error or "")[:80],
        }
        for r in results
    ]
    return table(rows, ["#", "status", "workflow", "seconds", "parameters", "output", "error"])
