"""``nyxnb run / resume / pause / show / list / demo``."""

from __future__ import annotations

from dataclasses import asdict

import click

from nyxnb.cli.common import emit, get_store, stream_events, table, wants_json, with_json
from nyxnb.cli.options import RunFlags, run_flags
from nyxnb.engine import api
from nyxnb.reports.summary import WorkflowSummary, list_workflows, workflow_summary
from nyxnb.store.models import RUNNING


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@run_flags
@click.option(
    "--matrix",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Run variants (any defaults key) concurrently as one experiment.",
)
@click.option("--variants", "use_variants", is_flag=True, help="Run the spec's `variants:`.")
@with_json
@click.pass_context
def run(
    ctx: click.Context,
    spec: str,
    flags: RunFlags,
    matrix: tuple[str, ...],
    use_variants: bool,
) -> None:
    """Create a workflow from SPEC and run it (or its variants, as one experiment)."""
    if matrix or use_variants:
        from nyxnb.cli.iterate import run_variants

        _refuse_unused_with_variants(flags)
        run_variants(ctx, flags.spec(spec), flags.tenant, flags.project, matrix, cache=flags.cache)
    events = api.run_iter(
        flags.spec(spec),
        store=get_store(ctx),
        tenant=flags.tenant,
        project=flags.project,
        **asdict(flags.options),
    )
    stream_events(ctx, events)


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--tenant", help="Only resume if WF belongs to this tenant.")
@with_json
@click.pass_context
def resume(ctx: click.Context, workflow_id: str, tenant: str | None) -> None:
    """Resume WF: every step that is not completed runs, in order."""
    store = get_store(ctx)
    stream_events(ctx, api.resume_iter(workflow_id, store=store, tenant=tenant))


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--tenant", help="Only pause if WF belongs to this tenant.")
@with_json
@click.pass_context
def pause(ctx: click.Context, workflow_id: str, tenant: str | None) -> None:
    """Ask a running WF to pause after the items in flight."""
    api.pause(workflow_id, store=get_store(ctx), tenant=tenant)
    emit(
        ctx,
        {"workflow_id": workflow_id, "pause_requested": True},
        f"pause requested for {workflow_id}; it stops after the items in flight",
    )


def _reasoning(tokens: int) -> str:
    """`` (N reasoning)`` when some of the output tokens were thinking, else nothing."""
    return f" ({tokens:,} reasoning)" if tokens else ""


def _show_text(data: WorkflowSummary) -> str:
    from nyxnb.notebook.progress import money, tokens_text

    rows = [
        {
            **asdict(s),
            "items": f"{s.items_done}/{s.items_total}" if s.items_total else "",
            "gen": "yes" if s.auto_generated else "",
            "cost": money(s.cost_usd),
            "tokens": tokens_text(s.input_tokens, s.output_tokens) + _reasoning(s.reasoning_tokens),
        }
        for s in data.steps
    ]
    t = data.totals
    head = f"{data.name} [{data.id}]  {data.tenant}/{data.project}  status: {data.shown_status}"
    if data.interrupted:
        head += f" (stored: {data.status})\n{data.note}"
    if data.error:
        head += f"\nerror: {data.error}"
    if data.lease_owner and data.shown_status == RUNNING:
        head += f"\nrun by: {data.lease_owner}"
    for s in data.steps:
        for owner, n in s.claims.items():
            head += f"\n{s.name}: {n} items held by worker {owner}"
    cols = ["order", "name", "type", "persona", "provider", "status", "items", "gen", "tokens"]
    steps = table(rows, [*cols, "cost"])
    ledger = table(
        [{**asdict(p), "cost_usd": money(p.cost_usd)} for p in data.by_provider],
        ["provider", "calls", "ok", "errors", "cached", "input_tokens", "output_tokens",
         "reasoning_tokens", "cost_usd"],
    )  # fmt: skip
    total = (
        f"total: {t.calls} calls, {tokens_text(t.input_tokens, t.output_tokens)} tokens"
        f"{_reasoning(t.reasoning_tokens)}, {money(t.cost_usd)}"
    )
    return f"{head}\n\n{steps}{_batches_text(data)}\n\nprovider calls:\n{ledger}\n{total}"


def _refuse_unused_with_variants(flags: RunFlags) -> None:
    """Variants take their overrides from the matrix or the spec; say so, rather than drop one."""
    given = {"--provider": flags.provider, "--concurrency": flags.concurrency,
             "--max-cost": flags.max_cost, "--batch": flags.batch or None}  # fmt: skip
    unused = [name for name, value in given.items() if value is not None]
    if unused:
        raise click.UsageError(
            f"{', '.join(unused)} cannot be used with --matrix/--variants: give them as matrix "
            "keys (e.g. --matrix provider=offline) or in the spec"
        )


def _batches_text(data: WorkflowSummary) -> str:
    """The workflow's provider batches: state, the provider's counts, age (open ones first)."""
    from nyxnb.notebook.progress import duration

    batches = sorted(data.batches, key=lambda b: not b.live)
    rows = [
        {
            **asdict(b),
            "batch_id": b.batch_id or "(not submitted)",
            "done": f"{b.done}/{b.items}",
            "age": duration(b.age_s) if b.age_s is not None and b.live else "",
            "ended": f"{b.ended_at:%Y-%m-%d %H:%M}" if b.ended_at else "",
        }
        for b in batches
    ]
    cols = ["step", "provider", "batch_id", "state", "done", "age", "ended"]
    return f"\n\nprovider batches:\n{table(rows, cols)}" if rows else ""


def _clip(text: str | None, width: int) -> str:
    text = (text or "").strip()
    return text if len(text) <= width else text[:width].rstrip() + f"\n… ({len(text)} chars)"


def _outputs_text(data: WorkflowSummary, width: int = 600) -> str:
    """Each step's prompt template and output (truncated), for `show --outputs`."""
    parts = []
    for s in data.steps:
        note = " (reused from the previous revision)" if s.reused_from else ""
        score = f"  score: {s.score:g}" if s.score is not None else ""
        parts.append(f"── {s.order} {s.name} [{s.status}]{note}{score}")
        if s.prompt:
            parts.append("prompt:\n" + _clip(s.prompt, width // 2))
        parts.append("output:\n" + (_clip(s.output, width) or "(none)"))
    return "\n".join(parts)


@click.command()
@click.argument("workflow_id", metavar="WF")
@click.option("--tenant", help="Only show WF if it belongs to this tenant.")
@click.option("--outputs", is_flag=True, help="Also print each step's prompt and output.")
@with_json
@click.pass_context
def show(ctx: click.Context, workflow_id: str, tenant: str | None, outputs: bool) -> None:
    """Show WF: steps, items, tokens and cost by provider (--outputs: prompts and outputs)."""
    store = get_store(ctx)
    data = workflow_summary(
        store, workflow_id, tenant_id=store.tenant_id(tenant), with_items=wants_json(ctx)
    )
    text = lambda: _show_text(data) + ("\n\n" + _outputs_text(data) if outputs else "")  # noqa: E731
    emit(ctx, data.to_dict(), text)


@click.command("list")
@click.option("--tenant", help="Only this tenant's workflows.")
@with_json
@click.pass_context
def list_(ctx: click.Context, tenant: str | None) -> None:
    """List workflows, newest first."""
    store = get_store(ctx)
    rows = [asdict(r) for r in list_workflows(store, tenant_id=store.tenant_id(tenant))]
    cols = ["id", "tenant", "project", "name", "status", "created_at", "finished_at"]
    shown = [
        {
            **r,
            "created_at": f"{r['created_at']:%Y-%m-%d %H:%M}" if r["created_at"] else "",
            "finished_at": f"{r['finished_at']:%Y-%m-%d %H:%M}" if r["finished_at"] else "",
            "revision_of": r["revision_of"] or "",
        }
        for r in rows
    ]
    notes = "".join(f"\n{r['note']}" for r in rows if r["note"])
    emit(ctx, shown, lambda: table(shown, [*cols, "revision_of"]) + notes)


@click.command()
@click.option(
    "--provider",
    default="offline",
    show_default=True,
    help="Provider for every step (offline needs no key).",
)
@click.option(
    "--latency-ms",
    default=60.0,
    show_default=True,
    help="Simulated latency of the offline provider, so the progress is visible.",
)
@with_json
@click.pass_context
def demo(ctx: click.Context, provider: str, latency_ms: float) -> None:
    """Seed if needed and run the sample BRbase workflow (offline by default)."""
    from nyxnb.store.seed import load_spec_path, seed

    store = get_store(ctx)
    seed(store)
    events = api.run_iter(
        load_spec_path(),
        store=store,
        tenant="nyx",
        project="BRbase",
        provider=provider,  # the spec's cache: a second demo answers from it
        provider_options={"offline": {"latency_ms": latency_ms}},
    )
    stream_events(ctx, events)


COMMANDS = [run, resume, pause, show, list_, demo]
