"""The ``nyxnb`` command.  Every command takes ``--json``; errors are one line on stderr, exit 1."""

from __future__ import annotations

import re
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import DatabaseError, IntegrityError

from nyxnb.cli import batch as cli_batch
from nyxnb.cli import batchcmd as cli_batchcmd
from nyxnb.cli import export as cli_export
from nyxnb.cli import iterate as cli_iterate
from nyxnb.cli import migrate as cli_migrate
from nyxnb.cli import models as cli_models
from nyxnb.cli import run as cli_run
from nyxnb.cli import workers as cli_workers
from nyxnb.cli.common import emit, fail_line, get_store, json_option, table, with_json
from nyxnb.errors import AlreadyExists, ConfigError, NyxError
from nyxnb.store.models import Project, Tenant

SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class NyxGroup(click.Group):
    """A group that turns :class:`NyxError` (and a store's own error) into one line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (NyxError, DatabaseError) as exc:
            fail_line(ctx, exc)


@click.group(cls=NyxGroup)
@click.option(
    "--db",
    envvar="NYXNB_DB_URL",
    metavar="URL",
    help="Store URL (default: data/nyxnb.db of the project; env NYXNB_DB_URL).",
)
@json_option
@click.version_option(package_name="nyxnb")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """nyxnb: durable, multi-step LLM workflows for Jupyter."""
    ctx.ensure_object(dict)["db"] = db


@cli.command()
@with_json
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create or upgrade the store's schema."""
    store = get_store(ctx)
    from nyxnb.store.schema import HEAD

    url = store.url.render_as_string(hide_password=True)
    emit(ctx, {"url": url, "revision": HEAD}, f"store ready at {url} (schema {HEAD})")


@cli.command()
@with_json
@click.pass_context
def seed(ctx: click.Context) -> None:
    """Load the sample tenants, projects, personas and BRbase data (idempotent)."""
    from nyxnb.store.seed import seed as run_seed

    report = run_seed(get_store(ctx))
    data = report.to_dict() if hasattr(report, "to_dict") else report.__dict__
    emit(ctx, data, lambda: "seeded: " + ", ".join(f"{k}={v}" for k, v in data.items()))


@cli.group()
def tenant() -> None:
    """Add and list tenants."""


@tenant.command("add")
@click.argument("slug")
@click.option("--name", help="Display name (default: the slug).")
@with_json
@click.pass_context
def tenant_add(ctx: click.Context, slug: str, name: str | None) -> None:
    """Add a tenant."""
    if not SLUG.fullmatch(slug):
        raise ConfigError(
            f"invalid tenant slug {slug!r}",
            hint="use lowercase letters, digits, '-' and '_', starting with a "
            "letter or digit (e.g. acme-labs)",
        )
    store = get_store(ctx)
    try:
        with store.session() as s:
            row = Tenant(slug=slug, name=name or slug)
            s.add(row)
            s.flush()
            data = {"id": row.id, "slug": row.slug, "name": row.name}
    except IntegrityError:
        raise AlreadyExists(
            f"tenant {slug!r} already exists", hint="pick another slug; see `nyxnb tenant list`"
        ) from None
    emit(ctx, data, f"added tenant {slug} ({data['id']})")


@tenant.command("list")
@with_json
@click.pass_context
def tenant_list(ctx: click.Context) -> None:
    """List tenants."""
    with get_store(ctx).session() as s:
        rows = [
            {"id": t.id, "slug": t.slug, "name": t.name}
            for t in s.scalars(select(Tenant).order_by(Tenant.slug))
        ]
    emit(ctx, rows, lambda: table(rows, ["slug", "name", "id"]))


@cli.group()
def project() -> None:
    """Add and list projects."""


@project.command("add")
@click.argument("tenant_slug", metavar="TENANT")
@click.argument("name")
@click.option("--description", default="", help="What the project is.")
@with_json
@click.pass_context
def project_add(ctx: click.Context, tenant_slug: str, name: str, description: str) -> None:
    """Add a project to a tenant."""
    if not name.strip() or name != name.strip():
        raise ConfigError(
            f"invalid project name {name!r}",
            hint="give a non-empty name without leading or trailing spaces",
        )
    store = get_store(ctx)
    try:
        with store.tenant(tenant_slug) as s:
            row = Project(name=name, description=description)
            s.add(row)
            s.flush()
            data = {"id": row.id, "tenant": tenant_slug, "name": name}
    except IntegrityError:
        raise AlreadyExists(
            f"project {name!r} already exists in tenant {tenant_slug!r}",
            hint="pick another name; see `nyxnb project list`",
        ) from None
    emit(ctx, data, f"added project {name} to {tenant_slug} ({data['id']})")


@project.command("list")
@click.option("--tenant", "tenant_slug", help="Only this tenant's projects.")
@with_json
@click.pass_context
def project_list(ctx: click.Context, tenant_slug: str | None) -> None:
    """List projects."""
    store = get_store(ctx)
    tenant_id = store.tenant_id(tenant_slug)
    with store.session(tenant_id) as s:
        query = select(Project, Tenant.slug).join(Tenant, Tenant.id == Project.tenant_id)
        rows = [
            {"id": p.id, "tenant": slug, "name": p.name}
            for p, slug in s.execute(query.order_by(Tenant.slug, Project.name))
        ]
    emit(ctx, rows, lambda: table(rows, ["tenant", "name", "id"]))


def register_commands() -> None:
    """Attach the commands that live in other modules."""
    for command in (
        *cli_run.COMMANDS,
        *cli_batch.COMMANDS,
        *cli_workers.COMMANDS,
        *cli_batchcmd.COMMANDS,
        *cli_export.COMMANDS,
        *cli_models.COMMANDS,
        cli_migrate.clone,
        cli_migrate.migrate,
    ):
        cli.add_command(command)
    for command in cli_iterate.COMMANDS:
        cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="nyxnb")


register_commands()
