"""``nyxnb rerun``, ``revisions`` and ``compare``: iterate on a workflow and line runs up."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from nyxnb.cli.common import emit, get_store, stream_events, table, wants_json, with_json
from nyxnb.engine import api
from nyxnb.engine.iterate.digest import digest as write_digest
from nyxnb.engine.iterate.revisions import lineage, rerun_job
from nyxnb.engine.iterate.variants import parse_matrix, run_matrix
from nyxnb.reports.compare import CompareRow, Comparison, compare
from nyxnb.spec import WorkflowSpec


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False), help="The changed spec.")
@click.option("--from", "from_step", metavar="STEP", help="Force STEP and every later step.")
@click.option("--provider", help="Run every step on this provider only (e.g. offline).")
@click.option("--no-cache", is_flag=True, help="Do not use the response cache.")
@click.option("--tenant", help="Only rerun WF if it belongs to this tenant.")
@with_json
@click.pass_context
def rerun(
    ctx: click.Context,
    workflow_id: str,
    spec_path: str | None,
    from_step: str | None,
    provider: str | None,
    no_cache: bool,
    tenant: str | None,
) -> None:
    """Re-run WF with a changed spec as a new revision; unchanged steps keep their outputs."""
    job = rerun_job(
        workflow_id,
        spec_path,
        from_step=from_step,
        store=get_store(ctx),
        tenant=tenant,
        provider=provider,
        cache=False if no_cache else None,
    )
    stream_events(ctx, api.job_events_sync(job))


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--tenant", help="Only if WF belongs to this tenant.")
@with_json
@click.pass_context
def revisions(ctx: click.Context, workflow_id: str, tenant: str | None) -> None:
    """List WF's lineage: its first run and every revision, oldest first."""
    rows = [vars(r) for r in lineage(get_store(ctx), workflow_id, tenant=tenant)]
    for r in rows:
        r["current"] = "*" if r["id"] == workflow_id else ""
    emit(
        ctx,
        rows,
        lambda: table(rows, ["current", "id", "name", "status", "revision_of", "created_at"]),
    )


def _short(text: str | None, width: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _compare_text(result: Comparison) -> str:
    lines = [f"comparing {len(result.workflow_ids)} runs: " + ", ".join(result.labels), ""]
    for row in result.rows:
        lines.append(f"## {row.step} ({row.type}){'  [changed]' if row.changed else ''}")
        cells: list[dict[str, Any]] = []
        for c in row.cells:
            if c is None:
                continue
            cells.append(
                {
                    "run": c.label,
                    "status": c.status + (" (reused)" if c.reused else ""),
                    "provider": c.provider or "",
                    "model": c.model or "",
                    "tokens": f"{c.input_tokens}/{c.output_tokens}"
                    + (f" ({c.reasoning_tokens} reasoning)" if c.reasoning_tokens else ""),
                    "cost": f"${c.cost_usd:.4f}",
                    "ms": f"{c.latency_ms:.0f}",
                    "score": "" if c.score is None else f"{c.score:g}",
                    "violations": "" if c.violations is None else c.violations,
                    "output": _short(c.output),
                }
            )
        cols = ["run", "status", "provider", "model", "tokens", "cost", "ms", "score"]
        cols += ["violations", "output"]
        lines += [table(cells, cols)]
        for c in row.cells:
            if c is not None and c.prompt_diff:
                lines += [f"prompt diff ({c.label}):", c.prompt_diff]
        lines += _rows_text(row, result.labels)
        lines.append("")
    return "\n".join(lines)


def _rows_text(row: CompareRow, labels: tuple[str, ...]) -> list[str]:
    """A dataset fan-out's changed rows (by key) and changed fields, per run."""
    lines = []
    for label, changes in zip(labels, row.rows, strict=False):
        if changes is None or not changes.any:
            continue
        lines.append(
            f"rows ({label}): {changes.changed} changed, {changes.added} added, "
            f"{changes.removed} removed"
        )
        for c in changes.rows:
            what = [f"inputs {', '.join(c.inputs)}"] if c.inputs else []
            what += [f"fields {', '.join(c.fields)}"] if c.fields else []
            lines.append(f"  {c.kind:8} {c.key}" + (f": {'; '.join(what)}" if what else ""))
    return lines


@click.command(name="compare")
@click.argument("ids", nargs=-1, required=True, metavar="WF|EXPERIMENT...")
@click.option("--tenant", help="Only workflows of this tenant.")
@with_json
@click.pass_context
def compare_cmd(ctx: click.Context, ids: tuple[str, ...], tenant: str | None) -> None:
    """Line runs up step by step: prompts, outputs and diffs, tokens, cost, latency, scores."""
    result = compare(list(ids), store=get_store(ctx), tenant=tenant)
    emit(ctx, result.to_dict(), lambda: _compare_text(result))


def run_variants(
    ctx: click.Context,
    spec: str | Path | WorkflowSpec,
    tenant: str,
    project: str,
    matrix: tuple[str, ...],
    *,
    cache: bool | None,
) -> None:
    """`nyxnb run --matrix`: every variant at once; exit 0 only if all completed."""
    as_json = wants_json(ctx)
    show = (lambda e: click.echo(e.to_json())) if as_json else None
    result = run_matrix(
        spec,
        tenant=tenant,
        project=project,
        matrix=parse_matrix(matrix) if matrix else None,
        store=get_store(ctx),
        cache=cache,
        on_event=show,
    )
    rows = [
        {"variant": v, "workflow_id": r.workflow_id, "status": r.status}
        for v, r in zip(result.variants, result.results, strict=True)
    ]
    if as_json:
        click.echo(json.dumps({"experiment_id": result.id, "variants": rows}))
    else:
        click.echo(table(rows, ["variant", "workflow_id", "status"]))
        click.echo(f"experiment {result.id}: compare with `nyxnb compare {result.id}`")
    sys.exit(0 if result.ok else 1)


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--persona", default="Athena", show_default=True, help="Who writes the digest.")
@click.option("--provider", help="Provider for the digest (default: the run's chain).")
@click.option("--facts-only", is_flag=True, help="Only the deterministic facts, no LLM call.")
@click.option("--tenant", help="Only if WF belongs to this tenant.")
@with_json
@click.pass_context
def digest(
    ctx: click.Context,
    workflow_id: str,
    persona: str,
    provider: str | None,
    facts_only: bool,
    tenant: str | None,
) -> None:
    """Write WF's insights (facts and an LLM digest) to workflow_insights and print them."""
    found = write_digest(
        workflow_id,
        store=get_store(ctx),
        tenant=tenant,
        persona=persona,
        provider=provider,
        llm=not facts_only,
    )
    rows = [vars(i) for i in found]
    emit(ctx, rows, lambda: "\n".join(f"[{i.kind}] {i.content}" for i in found))


COMMANDS = [rerun, revisions, compare_cmd, digest]
