"""Variants: one spec run several ways at once, as one experiment.

``--matrix provider=anthropic,google,openai`` (any ``defaults`` key; several ``--matrix`` give
their product) or a ``variants:`` block of named ``defaults`` overrides in the spec.  Every
variant is its own workflow carrying the experiment id and its label; they run concurrently on
one event loop, and ``compare`` takes the experiment id.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nyxnb import events as ev
from nyxnb.engine import api
from nyxnb.engine.durable.records import update_workflow
from nyxnb.engine.workflows import RunOptions, create_workflow
from nyxnb.errors import SpecError
from nyxnb.spec import Defaults, WorkflowSpec, load_spec
from nyxnb.store.models import new_id

__all__ = ["Experiment", "parse_matrix", "run_matrix", "variant_specs"]


@dataclass(frozen=True)
class Experiment:
    """The outcome of a matrix run: the experiment id and one result per variant."""

    id: str
    variants: tuple[str, ...]
    results: tuple[api.RunResult, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when every variant completed."""
        return all(r.ok for r in self.results)


def parse_matrix(entries: list[str] | tuple[str, ...]) -> dict[str, list[str]]:
    """``["provider=a,b", "temperature=0,1"]`` -> ``{"provider": ["a", "b"], ...}``."""
    out: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise SpecError(f"--matrix {entry!r} is not KEY=V1,V2", field="matrix",
                            hint="e.g. --matrix provider=offline,openai")  # fmt: skip
        if key not in Defaults.model_fields:
            raise SpecError(f"--matrix key {key!r} is not a defaults key", field="matrix",
                            hint=f"one of: {', '.join(Defaults.model_fields)}")  # fmt: skip
        out[key] = [v.strip() for v in values.split(",") if v.strip()]
    return out


def _with_defaults(spec: WorkflowSpec, overrides: dict[str, Any]) -> WorkflowSpec:
    data = spec.to_dict()
    data.pop("variants", None)
    if "provider" in overrides:  # one provider for the whole variant, as --provider does
        data.setdefault("defaults", {})["fallback"] = []
        for step in data["steps"]:
            step.pop("provider", None)
            step.pop("fallback", None)
    data.setdefault("defaults", {}).update(overrides)
    return WorkflowSpec.model_validate(data)


def variant_specs(
    spec: WorkflowSpec, matrix: dict[str, list[str]] | None = None
) -> list[tuple[str, WorkflowSpec]]:
    """(label, spec) per variant: the matrix product, else the spec's ``variants:`` block."""
    if matrix:
        keys = list(matrix)
        out = []
        for combo in itertools.product(*(matrix[k] for k in keys)):
            overrides = {
                k: yaml.safe_load(v) if k != "provider" else v
                for k, v in zip(keys, combo, strict=True)
            }
            label = ",".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
            out.append((label, _with_defaults(spec, overrides)))
        return out
    if not spec.variants:
        raise SpecError("no variants: give --matrix KEY=V1,V2 or a `variants:` block",
                        field="variants", hint="e.g. variants: {a: {temperature: 0}}")  # fmt: skip
    return [(name, _with_defaults(spec, dict(o))) for name, o in spec.variants.items()]


async def _run_all(jobs: list[api.Job]) -> list[api.RunResult]:
    async def one(job: api.Job) -> api.RunResult:
        seen: list[ev.Event] = [e async for e in api.job_events(job)]
        return api._collect(iter(seen))

    return list(await asyncio.gather(*(one(j) for j in jobs)))


def run_matrix(
    spec: WorkflowSpec | dict[str, Any] | str | Path,
    *,
    tenant: str,
    project: str,
    matrix: dict[str, list[str]] | None = None,
    store: api.StoreArg = None,
    cache: bool | None = None,
    on_event: api.OnEvent | None = None,
) -> Experiment:
    """Create one workflow per variant, run them concurrently, return the experiment."""
    st = api._store(store)
    experiment = new_id()
    ids, labels = [], []
    for label, variant in variant_specs(load_spec(spec), matrix):
        wid = create_workflow(st, variant, tenant=tenant, project=project,
                              options=RunOptions(cache=cache))  # fmt: skip
        update_workflow(st, wid, experiment_id=experiment, variant=label)
        ids.append(wid)
        labels.append(label)
    tenant_id = st.find_tenant(tenant).id
    jobs = [api.Job(st, wid, tenant_id, on_event=on_event) for wid in ids]
    future = asyncio.run_coroutine_threadsafe(_run_all(jobs), api._LoopThread.loop())
    return Experiment(experiment, tuple(labels), tuple(future.result()))
