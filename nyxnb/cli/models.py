"""``nyxnb models [ENDPOINT]``: what each endpoint serves, whether its key is set, its prices."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import click

from nyxnb.cli.common import emit, table, with_json
from nyxnb.providers.catalog import EndpointModels, catalog
from nyxnb.providers.endpoints import endpoint_table
from nyxnb.spec import load_spec


def _usd(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _text(found: list[EndpointModels]) -> str:
    blocks = []
    for ep in found:
        head = f"{ep.endpoint} ({ep.api}, key {ep.key})"
        if ep.error:
            blocks.append(f"{head}: cannot list models: {ep.error}")
            continue
        rows = [
            {"model": m.model, "in $/Mtok": _usd(m.input_usd_mtok),
             "out $/Mtok": _usd(m.output_usd_mtok)}
            for m in ep.models
        ]  # fmt: skip
        blocks.append(f"{head}\n{table(rows, ['model', 'in $/Mtok', 'out $/Mtok'])}")
    return "\n\n".join(blocks)


@click.command("models")
@click.argument("endpoint", required=False)
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False),
    help="Also list the endpoints this workflow spec declares.",
)
@with_json
@click.pass_context
def models(ctx: click.Context, endpoint: str | None, spec_path: str | None) -> None:
    """List the models each endpoint serves, whether its key is set, and prices per Mtok."""
    declared = load_spec(spec_path).endpoints if spec_path else None
    found = asyncio.run(catalog(endpoint_table(declared), endpoint))
    emit(ctx, [asdict(ep) for ep in found], lambda: _text(found))


COMMANDS = (models,)
