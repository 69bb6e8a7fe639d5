"""``nyxnb clone`` and ``nyxnb migrate``: click commands added to the main group by cli.py.

    nyxnb clone WF [--name N] [--project P] [--tenant T] [--json]
    nyxnb migrate PROJECT --from T --to T                   # dry run: prints the plan
    nyxnb migrate PROJECT --from T --to T --apply [--on-conflict abort|rename|merge]
    nyxnb migrate --plan plan.json --apply                   # apply a reviewed (saved) plan
    nyxnb migrate --reverse MOVE_ID

Errors (unknown tenant or project, source equal to target, a stale plan, an unresolved conflict)
are one line and exit code 1, and nothing is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from nyxnb.errors import ConfigError, NyxError
from nyxnb.store.database import Store, open_store
from nyxnb.tenants.clone import apply_clone, plan_clone
from nyxnb.tenants.migrate import (
    POLICIES,
    MigrationPlan,
    apply_migration,
    plan_migration,
    reverse_migration,
)


@contextmanager
def store_of(ctx: click.Context) -> Iterator[Store]:
    """The store named by ``ctx.obj["db"]`` (or one the group already opened); errors -> exit 1."""
    obj = ctx.ensure_object(dict)
    shared = obj.get("store")
    try:
        store = shared if shared is not None else open_store(obj.get("db"))
        try:
            yield store
        finally:
            if shared is None:
                store.dispose()
    except NyxError as err:
        click.echo(f"error: {err}", err=True)  # the same one line as every other command
        raise SystemExit(1) from None


def _wants_json(ctx: click.Context, flag: bool) -> bool:
    return flag or bool(ctx.ensure_object(dict).get("json"))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.command("clone")
@click.argument("workflow")
@click.option("--name", help="Name of the clone (default: '<name> (clone)').")
@click.option("--project", help="Project (name or id) of the same tenant to put the clone in.")
@click.option("--tenant", help="Only look for the workflow in this tenant.")
@click.option("--dry-run", is_flag=True, help="Show what would be cloned; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def clone(
    ctx: click.Context,
    workflow: str,
    name: str | None,
    project: str | None,
    tenant: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Clone a workflow's definition: user steps only, in order, all pending."""
    with store_of(ctx) as store:
        plan = plan_clone(store, workflow, name, project, tenant=tenant)
        if dry_run:
            _echo_json(plan.to_dict()) if _wants_json(ctx, as_json) else click.echo(str(plan))
            return
        wf = apply_clone(store, plan)
    data = {
        "id": wf.id,
        "name": wf.name,
        "project_id": wf.project_id,
        "cloned_from_id": wf.cloned_from_id,
        "steps": [{"order": st.order, "name": st.name, "type": st.type} for st in wf.steps],
        "dropped": list(plan.dropped),
    }
    if _wants_json(ctx, as_json):
        _echo_json(data)
    else:
        left_out = f", {len(plan.dropped)} generated steps left out" if plan.dropped else ""
        click.echo(f"cloned {plan.source_name!r} as {wf.name!r} ({wf.id}): "
                   f"{len(wf.steps)} steps{left_out}, all pending")  # fmt: skip
        click.echo(f"run it: nyxnb resume {wf.id}")


@click.command("migrate")
@click.argument("project", required=False)
@click.option("--from", "source", metavar="TENANT", help="Tenant the project is in.")
@click.option("--to", "target", metavar="TENANT", help="Tenant to move it to.")
@click.option(
    "--apply", "do_apply", is_flag=True, help="Apply (default: dry run, prints the plan)."
)
@click.option("--on-conflict", type=click.Choice(POLICIES), default="abort", show_default=True,
              help="What to do with non-empty conflicting rows of the target.")  # fmt: skip
@click.option("--suffix", help="Suffix for --on-conflict rename (default: -<source tenant>).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Apply this saved plan (the --json output of a dry run).")  # fmt: skip
@click.option("--reverse", "move_id", metavar="MOVE_ID", help="Undo an applied move.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def migrate(
    ctx: click.Context,
    project: str | None,
    source: str | None,
    target: str | None,
    do_apply: bool,
    on_conflict: str,
    suffix: str | None,
    plan_file: Path | None,
    move_id: str | None,
    as_json: bool,
) -> None:
    """Move a project to another tenant: dry run by default, --apply, --reverse MOVE_ID."""
    as_json = _wants_json(ctx, as_json)
    with store_of(ctx) as store:
        if move_id:
            result = reverse_migration(store, move_id)
            _echo_json(result.to_dict()) if as_json else click.echo(str(result))
            return
        plan = _get_plan(store, project, source, target, suffix, plan_file)
        if not do_apply:
            _show_plan(plan, on_conflict, as_json)
            return
        result = apply_migration(store, plan, on_conflict)
        _echo_json(result.to_dict()) if as_json else click.echo(str(result))


def _get_plan(
    store: Store,
    project: str | None,
    source: str | None,
    target: str | None,
    suffix: str | None,
    plan_file: Path | None,
) -> MigrationPlan:
    if plan_file is not None:
        try:
            text = plan_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read plan {plan_file}: {exc.strerror}") from None
        return MigrationPlan.from_json(text)
    missing = [n for n, v in (("PROJECT", project), ("--from", source), ("--to", target)) if not v]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)}", hint="nyxnb migrate PROJECT --from TENANT --to TENANT"
        )
    assert project and source and target
    return plan_migration(store, project, source, target, suffix=suffix)


def _show_plan(plan: MigrationPlan, on_conflict: str, as_json: bool) -> None:
    try:
        resolutions: list[dict[str, Any]] | None = [r.__dict__ for r in plan.resolve(on_conflict)]
        refused = None
    except NyxError as err:
        resolutions, refused = None, str(err)
    if as_json:
        body = {"plan": plan.to_dict(), "on_conflict": on_conflict}
        _echo_json(body | {"resolutions": resolutions, "refused": refused})
        return
    click.echo(plan.describe(on_conflict))
    click.echo("dry run: nothing was written; add --apply to move")
