"""Create workflows from specs: resolve tenant, project, personas and provider chains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from nyxnb.callspec import CALL_FIELDS
from nyxnb.engine.materialise import materialise
from nyxnb.errors import MissingKey, NotFound, SpecError
from nyxnb.providers.endpoints import Table, endpoint_table, split_entry
from nyxnb.providers.registry import create_provider, provider_class
from nyxnb.spec import StepSpec, WorkflowSpec, load_spec
from nyxnb.store.database import Database
from nyxnb.store.models import PENDING, Persona, Project, Repository, Workflow, WorkflowStep


@dataclass(frozen=True)
class RunOptions:
    """Overrides for one run; ``None`` keeps what the spec says."""

    provider: str | None = None
    concurrency: int | None = None
    cache: bool | None = None
    max_cost_usd: float | None = None
    batch: bool | None = None


def step_chain(step: StepSpec, spec: WorkflowSpec) -> list[str]:
    """The provider fallback chain of a step (spec defaults applied, duplicates removed)."""
    if isinstance(step.provider, list):
        chain = list(step.provider)
    else:
        rest = step.fallback if step.fallback is not None else spec.defaults.fallback
        chain = [step.provider or spec.defaults.provider, *rest]
    return list(dict.fromkeys(chain))


def apply_overrides(spec: WorkflowSpec, options: RunOptions) -> WorkflowSpec:
    """A copy of ``spec`` with the run's overrides baked in (so resume uses the same)."""
    data = spec.to_dict()
    defaults = data.setdefault("defaults", {})
    if options.provider:
        defaults["provider"], defaults["fallback"] = options.provider, []
        for step in data["steps"]:
            step.pop("provider", None)
            step.pop("fallback", None)
    if options.concurrency:
        defaults["concurrency"] = options.concurrency
    if options.cache is not None:
        defaults["cache"] = options.cache
    if options.batch is not None:
        defaults["batch"] = options.batch
    if options.max_cost_usd is not None:
        data["max_cost_usd"] = options.max_cost_usd
    return _with_python_data(WorkflowSpec.model_validate(data), spec)


def _with_python_data(new: WorkflowSpec, old: WorkflowSpec) -> WorkflowSpec:
    """``new`` holding the DataFrames / lists of ``old``'s datasets (a dict never copies them)."""
    steps = [
        s.model_copy(update={"items_from": o.items_from})
        if o.dataset is not None and o.dataset.data is not None
        else s
        for s, o in zip(new.steps, old.steps, strict=True)
    ]
    return new.model_copy(update={"steps": steps})


def personas_for(store: Database, tenant_id: str) -> dict[str, str]:
    """Persona name -> system prompt visible to a tenant (its own override global ones)."""
    with store.session(tenant_id, read_only=True) as s:
        rows = s.scalars(select(Persona)).all()
    found = {p.name: p.system_prompt for p in rows if p.tenant_id is None}
    found.update({p.name: p.system_prompt for p in rows if p.tenant_id is not None})
    return found


def _persona_names(spec: WorkflowSpec) -> list[tuple[str, str | None]]:
    named = [(f"steps[{i}].persona", s.persona) for i, s in enumerate(spec.steps)]
    if spec.generate.consistency_check:
        named.append(
            ("generate.consistency_check.persona", spec.generate.consistency_check.persona)
        )
    if spec.generate.implementation_prompts:
        named.append(
            (
                "generate.implementation_prompts.persona",
                spec.generate.implementation_prompts.persona,
            )
        )
    return named


def frozen_personas(spec: WorkflowSpec, personas: dict[str, str]) -> dict[str, str]:
    """The prompts of the personas ``spec`` names, to be frozen with its workflow."""
    names = {name for _, name in _persona_names(spec) if name is not None}
    return {name: prompt for name, prompt in personas.items() if name in names}


def _check_names(spec: WorkflowSpec, personas: dict[str, str]) -> None:
    for where, name in _persona_names(spec):
        if name is not None and name not in personas:
            raise SpecError(
                f"unknown persona {name!r}",
                field=where,
                hint=f"known personas: {', '.join(sorted(personas)) or 'none (run `nyxnb seed`)'}",
            )
    endpoints = endpoint_table(spec.endpoints)
    for i, step in enumerate(spec.steps):
        for entry in step_chain(step, spec):
            provider_class(split_entry(entry)[0], endpoints)
        _check_thinking(i, step, spec, endpoints)


def _check_thinking(i: int, step: StepSpec, spec: WorkflowSpec, endpoints: Table) -> None:
    """Anthropic's extended thinking refuses a temperature: a spec error naming the step."""
    reasoning = step.reasoning or spec.defaults.reasoning
    temperature = step.temperature if step.temperature is not None else spec.defaults.temperature
    if reasoning is None or temperature is None or reasoning.budget_tokens == 0:
        return
    for entry in step_chain(step, spec):
        name = split_entry(entry)[0]
        if provider_class(name, endpoints).name == "anthropic":
            raise SpecError(
                f"step {step.name!r}: Anthropic extended thinking ({name}) does not accept a "
                f"temperature (it is {temperature:g})",
                field=f"steps[{i}].temperature",
                hint="drop the temperature, or the reasoning setting, for this step",
            )


def _check_ready(spec: WorkflowSpec) -> None:
    """Every LLM step needs at least one provider of its chain with a key in the environment."""
    endpoints = endpoint_table(spec.endpoints)
    for step in spec.steps:
        if step.type == "pattern-check":
            continue
        chain = step_chain(step, spec)
        providers = [create_provider(split_entry(e)[0], None, endpoints) for e in chain]
        missing = []
        for provider in providers:
            try:
                provider.check_ready()
                break
            except MissingKey as exc:
                missing.append(exc)
        else:
            names = " or ".join(v for exc in missing for v in exc.env_vars)
            raise MissingKey(", ".join(p.name for p in providers), [names])


def _check_repositories(store: Database, spec: WorkflowSpec, tenant_id: str) -> None:
    for i, step in enumerate(spec.steps):
        if step.type == "pattern-check" and step.repository:
            owner, _, repo = step.repository.partition("/")
            with store.session(tenant_id, read_only=True) as s:
                found = s.scalar(
                    select(Repository.id).where(Repository.owner == owner, Repository.repo == repo)
                )
            if found is None:
                raise SpecError(
                    f"repository {step.repository!r} not found in this tenant",
                    field=f"steps[{i}].repository",
                    hint="add the repository or point `repository:` at one it has",
                )


def _step_row(i: int, step: StepSpec, spec: WorkflowSpec) -> dict[str, Any]:
    chain = step_chain(step, spec)
    config = step.model_dump(
        mode="json",
        exclude_none=True,
        include={
            "items",
            "items_from",
            "concurrency",
            "max_tokens",
            "repository",
            "target",
            "fail_on_violation",
            "batch",
            "rubric",
            "scale",
            "output_schema",
            *CALL_FIELDS,
        },
    )
    return {
        "order": i,
        "name": step.name,
        "type": step.type,
        "persona": step.persona,
        "provider": chain[0],
        "fallback": chain[1:],
        "model": step.model or spec.defaults.model,
        "prompt": step.prompt,
        "config": config,
        "status": PENDING,
        "auto_generated": False,
    }


def find_project(store: Database, tenant_id: str, project: str) -> Project:
    """A tenant's project by name or id, or :class:`NotFound`."""
    with store.session(tenant_id) as s:
        found = s.scalar(select(Project).where((Project.name == project) | (Project.id == project)))
    if found is None:
        raise NotFound("project", project, hint="list projects with `nyxnb project list`")
    return found


def create_workflow(
    store: Database,
    spec: WorkflowSpec | dict[str, Any] | str | Path,
    *,
    tenant: str,
    project: str,
    options: RunOptions | None = None,
) -> str:
    """Validate ``spec`` and write a pending workflow with its user steps; returns its id."""
    parsed = apply_overrides(load_spec(spec), options or RunOptions())
    tenant_row = store.find_tenant(tenant)
    project_row = find_project(store, tenant_row.id, project)
    personas = personas_for(store, tenant_row.id)
    _check_names(parsed, personas)
    _check_repositories(store, parsed, tenant_row.id)
    _check_ready(parsed)
    with store.session(tenant_row.id) as s:
        wf = Workflow(
            project_id=project_row.id,
            name=parsed.name,
            status=PENDING,
            spec=parsed.to_dict(),
            personas=frozen_personas(parsed, personas),
        )
        s.add(wf)
        s.flush()
        for i, step in enumerate(parsed.steps):
            row = WorkflowStep(workflow_id=wf.id, **_step_row(i, step, parsed))
            s.add(row)
            if step.dataset is not None:  # the frozen copy: a resume never reads the file
                s.flush()
                values = {"id": row.id, "tenant_id": row.tenant_id}
                digest = materialise(s, values, step.dataset, f"steps[{i}].items_from")
                row.config = {**row.config, "dataset_digest": digest}
        return wf.id
