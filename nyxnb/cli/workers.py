"""``nyxnb submit / worker / workers``: queue workflows, run worker processes, list them."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import asdict

import click

from nyxnb import events as ev
from nyxnb.cli.common import emit, get_store, table, with_json
from nyxnb.cli.options import RunFlags, run_flags
from nyxnb.engine import loops
from nyxnb.engine.workers import queue
from nyxnb.engine.workers.claims import MAX_CLAIM_TTL_S, MIN_CLAIM_TTL_S
from nyxnb.engine.workers.worker import Worker, WorkerOptions, WorkerStats, live_workers
from nyxnb.store.models import QUEUED


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@run_flags
@with_json
@click.pass_context
def submit(ctx: click.Context, spec: str, flags: RunFlags) -> None:
    """Queue a workflow from SPEC for `nyxnb worker` processes (no provider call)."""
    workflow_id = queue.submit(
        get_store(ctx),
        flags.spec(spec),
        tenant=flags.tenant,
        project=flags.project,
        options=flags.options,
    )
    emit(ctx, {"workflow_id": workflow_id, "status": QUEUED}, workflow_id)


def _print_event(event: ev.Event) -> None:
    if isinstance(event, ev.WorkflowStarted | ev.WorkflowCompleted | ev.WorkflowFailed):
        click.echo(f"{event.type} {event.workflow_id}", err=True)


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Calls in flight in this worker.",
)
@click.option("--tenant", help="Only run this tenant's workflows.")
@click.option("--exit-when-idle", is_flag=True, help="Exit once nothing is queued or running.")
@click.option("--max-workflows", type=click.IntRange(1), help="Exit after leading K workflows.")
@click.option(
    "--claim-ttl",
    type=click.FloatRange(MIN_CLAIM_TTL_S, MAX_CLAIM_TTL_S),
    help="Seconds before a dead worker's claims and leases are taken over, 1 to 3600 "
    "(default NYXNB_CLAIM_TTL_S, else 6).",
)
@with_json
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: int,
    tenant: str | None,
    exit_when_idle: bool,
    max_workflows: int | None,
    claim_ttl: float | None,
) -> None:
    """Run queued (and crashed) workflows; share running fan-outs with other workers."""
    store = get_store(ctx)
    options = WorkerOptions(
        concurrency=concurrency,
        tenant_id=store.tenant_id(tenant),
        exit_when_idle=exit_when_idle,
        max_workflows=max_workflows,
        claim_ttl_s=claim_ttl,
    )
    stats = loops.run(_work(Worker(store, options, on_event=_print_event)))
    emit(
        ctx,
        asdict(stats),
        f"worker done: led {len(stats.led)} workflows, {stats.helped_items} items for others",
    )


async def _work(w: Worker) -> WorkerStats:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _drain_once, w, loop, sig)
    click.echo(f"worker {w.owner} started", err=True)
    return await w.run()


def _drain_once(w: Worker, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    click.echo("draining: finishing calls in flight (Ctrl-C again to stop at once)", err=True)
    w.drain()
    loop.remove_signal_handler(sig)  # a second Ctrl-C interrupts for real


@click.command()
@with_json
@click.pass_context
def workers(ctx: click.Context) -> None:
    """List live workers: host, pid, item claims held, workflow led, last heartbeat."""
    rows = [asdict(w) for w in live_workers(get_store(ctx))]
    cols = ["host", "pid", "concurrency", "claims", "workflow_id", "heartbeat_age_s", "owner"]
    emit(ctx, rows, lambda: table(rows, cols))


COMMANDS = (submit, worker, workers)
