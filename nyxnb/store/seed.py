"""Seed a store with the sample data of the original system (``data/sample.yaml``).

:func:`seed` creates, in ONE transaction: tenants ``nyx`` and ``clarait``, the nine global
personas, ``nyx``'s BRbase project with its repository, 234 code patterns and history, and
``clarait``'s EMPTY duplicate project and repository that blocked the original migration.
Idempotent: tenants, projects, repositories and personas are matched by natural key; history and
patterns are generated only where there are none.  Bulk rows (bulk ``INSERT``) come from word
lists and ``random.Random`` seeded by the sample's ``seed``: uuid4 ids, deterministic content and
times, every row dated in the sample's history (from its ``epoch``), not on the day it was seeded.

The data files are read from :func:`data_dir` (``nyxnb.paths.PACKAGE_ROOT / "data"``): a source
checkout's or an editable install's, not a wheel's -- pass ``data=`` to read another folder.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import insert, select

from nyxnb.autosteps import desired_generated
from nyxnb.errors import ConfigError
from nyxnb.paths import PACKAGE_ROOT
from nyxnb.spec import parse_spec
from nyxnb.store import models as m
from nyxnb.store.database import NyxSession, Store

Row = dict[str, Any]
SPEC_NAME = "brbase-plan"
_PATTERN_FIELDS = ("name", "rule", "category", "kind", "pattern", "applies_to")
_STEP_KEYS = ("name", "type", "persona", "prompt", "items", "provider", "model", "fallback")
_JINJA = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
_PROSE = SandboxedEnvironment(autoescape=False, trim_blocks=True, lstrip_blocks=True)


def data_dir() -> Path:
    """The checkout's ``data/`` folder (``PACKAGE_ROOT / "data"``)."""
    return PACKAGE_ROOT / "data"


def _load(relpath: str, data: Path | None = None) -> Any:
    path = (data or data_dir()) / relpath
    if not path.is_file():
        raise ConfigError(f"sample data file {path} not found", hint="pass data=<folder>")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_sample(data: Path | None = None) -> Row:
    """The parsed ``sample.yaml``: seed, tenants, projects, counts and word lists."""
    return dict(_load("sample.yaml", data))


def load_personas(data: Path | None = None) -> list[Row]:
    """The global personas of ``personas.yaml``: dicts with name, role and system_prompt."""
    return list(_load("personas.yaml", data)["personas"])


def load_spec_path(name: str = SPEC_NAME, data: Path | None = None) -> Path:
    """Path of the sample workflow spec ``data/workflows/<name>.yaml``."""
    path = (data or data_dir()) / "workflows" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no workflow spec {path}", hint="see data/workflows/ for the samples")
    return path


def load_spec(name: str = SPEC_NAME, data: Path | None = None) -> Row:
    """The sample workflow spec as a plain dict (not validated)."""
    return dict(yaml.safe_load(load_spec_path(name, data).read_text(encoding="utf-8")))


def expand_code_patterns(count: int, seed: int | str, data: Path | None = None) -> list[Row]:
    """``count`` code-pattern rows expanded from ``code_patterns.yaml``, round-robin by standard."""
    doc = _load("code_patterns.yaml", data)
    rng = random.Random(f"{seed}:code_patterns")
    pools = [_variants(std, doc["features"], rng) for std in doc["standards"]]
    rows: list[Row] = []
    while len(rows) < count and any(pools):
        for pool in pools:
            if pool and len(rows) < count:
                rows.append(pool.pop(0))
    if len(rows) < count:
        raise ConfigError(f"code_patterns.yaml yields {len(rows)} patterns, {count} asked")
    return rows


def _variants(std: Row, features: list[str], rng: random.Random) -> list[Row]:
    try:
        re.compile(std["pattern"])
    except re.error as exc:
        raise ConfigError(f"code pattern {std['name']!r}: bad regex: {exc}") from None
    base = {k: str(std[k]) for k in _PATTERN_FIELDS}
    if not any("{feature}" in v for v in base.values()):
        return [base]
    order = list(features)
    rng.shuffle(order)
    return [
        {k: v.replace("{feature}", f) for k, v in base.items()} | {"name": f"{std['name']}/{f}"}
        for f in order
    ]


@dataclass(frozen=True)
class SeedReport:
    """Rows created per table by :func:`seed`; ``created`` is False when nothing was new."""

    tenants: int = 0
    projects: int = 0
    repositories: int = 0
    code_patterns: int = 0
    personas: int = 0
    workflows: int = 0
    workflow_steps: int = 0
    step_items: int = 0
    project_notes: int = 0
    project_syncs: int = 0
    consolidations: int = 0
    workflow_insights: int = 0
    created: bool = False

    def counts(self) -> dict[str, int]:
        """Table name -> rows created."""
        return {k: v for k, v in asdict(self).items() if k != "created"}

    def to_dict(self) -> dict[str, Any]:
        """Counts per table plus ``created`` (JSON-serialisable)."""
        return asdict(self)

    @property
    def total(self) -> int:
        """Rows created across all tables."""
        return sum(self.counts().values())


def _tables_in_insert_order() -> list[type[m.Base]]:
    by_name = {mp.class_.__tablename__: mp.class_ for mp in m.Base.registry.mappers}
    return [by_name[f.name] for f in fields(SeedReport) if f.name != "created"]


class _Batch:
    """Rows to insert, per model, written in foreign-key order at the end."""

    def __init__(self, epoch: datetime) -> None:
        self.rows: dict[type[m.Base], list[Row]] = {t: [] for t in _tables_in_insert_order()}
        self.epoch = epoch  # rows with no time of their own were created then

    def add(self, model: type[m.Base], row: Row) -> str:
        row.setdefault("id", m.new_id())
        self.rows[model].append(row)
        return str(row["id"])

    def extend(self, model: type[m.Base], rows: list[Row]) -> None:
        self.rows[model].extend({"id": m.new_id(), **row} for row in rows)

    def write(self, s: NyxSession) -> None:
        for model, rows in self.rows.items():
            if rows:
                s.execute(insert(model), [self._dated(row) for row in rows])

    def _dated(self, row: Row) -> Row:  # times of the sample's history, not of the seeding day
        times = [v for v in row.values() if isinstance(v, datetime)] or [self.epoch]
        return {"created_at": min(times), "updated_at": max(times), **row}

    def report(self) -> SeedReport:
        counts = {str(model.__tablename__): len(rows) for model, rows in self.rows.items()}
        return SeedReport(**counts, created=any(counts.values()))


def seed(store: Store, data: Path | None = None) -> SeedReport:
    """Create the sample tenants, personas, projects and history; idempotent, one transaction."""
    sample = load_sample(data)
    batch = _Batch(datetime.fromisoformat(sample["epoch"]))
    with store.session() as s:
        tenants = {
            t["slug"]: _ensure(s, batch, m.Tenant, {"slug": t["slug"]}, {"name": t["name"]})
            for t in sample["tenants"]
        }
        for p in load_personas(data):
            extra = {"role": p["role"], "system_prompt": p["system_prompt"]}
            _ensure(s, batch, m.Persona, {"tenant_id": None, "name": p["name"]}, extra)
        for project in sample["projects"]:
            _seed_project(s, batch, sample, project, tenants[project["tenant"]], data)
        batch.write(s)
    return batch.report()


def _ensure(s: NyxSession, batch: _Batch, model: Any, key: Row, extra: Row) -> str:
    found = s.scalar(select(model.id).filter_by(**key).limit(1))
    return str(found) if found is not None else batch.add(model, {**key, **extra})


def _has(s: NyxSession, model: Any, **key: Any) -> bool:
    return s.scalar(select(model.id).filter_by(**key).limit(1)) is not None


def _seed_project(
    s: NyxSession, batch: _Batch, sample: Row, proj: Row, tenant_id: str, data: Path | None
) -> None:
    key = {"tenant_id": tenant_id, "name": proj["name"]}
    project_id = _ensure(s, batch, m.Project, key, {"description": proj.get("description", "")})
    repo = proj.get("repository") or {}
    patterns = expand_code_patterns(int(repo.get("code_patterns", 0)), sample["seed"], data)
    if repo:
        rkey = {"tenant_id": tenant_id, "owner": repo["owner"], "repo": repo["repo"]}
        repo_id = _ensure(s, batch, m.Repository, rkey, {"project_id": project_id})
        if patterns and not _has(s, m.CodePattern, repository_id=repo_id):
            ids = {"tenant_id": tenant_id, "repository_id": repo_id}
            batch.extend(m.CodePattern, [{**row, **ids} for row in patterns])
    counts = proj.get("counts") or {}
    if counts.get("workflows") and not _has(s, m.Workflow, project_id=project_id):
        history = _History(sample, proj, tenant_id, project_id, patterns, data)
        history.generate(batch)


@dataclass(frozen=True)
class _WfPlan:
    name: str
    status: m.Status
    area: int
    auto: bool
    trap: bool


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class _Text:
    """Deterministic prose: the sample's word lists and its output templates."""

    def __init__(self, rng: random.Random, sample: Row) -> None:
        self.rng, self.vocab = rng, sample["vocab"]
        self.templates = {k: _PROSE.from_string(v) for k, v in sample["outputs"].items()}

    def pick(self, key: str) -> str:
        return str(self.rng.choice(self.vocab[key]))

    def sentence(self) -> str:
        text = " ".join(self.pick(k) for k in ("subjects", "verbs", "objects", "qualifiers"))
        return text[0].upper() + text[1:] + "."

    def phrase(self) -> str:
        text = f"{self.pick('objects')} {self.pick('qualifiers')}"
        return text[0].upper() + text[1:]

    def paragraph(self, n: int = 3) -> str:
        return " ".join(self.sentence() for _ in range(n))

    def bullets(self, n: int = 3, mark: str = "-") -> str:
        return "\n".join(f"{mark} {self.sentence()}" for _ in range(n))

    def render(self, kind: str, **env: Any) -> str:
        names = ("pick", "sentence", "phrase", "paragraph", "bullets")
        helpers: Row = {n: getattr(self, n) for n in names} | {"vocab": self.vocab}
        helpers |= {n: getattr(self.rng, n) for n in ("choice", "sample", "randint")}
        return self.templates[kind].render(**helpers, **env).strip() + "\n"


class _History:
    """Generates one project's workflows (steps, items), notes, syncs, consolidations, insights."""

    def __init__(
        self, sample: Row, proj: Row, tenant_id: str, project_id: str, patterns: list[Row],
        data: Path | None,
    ) -> None:  # fmt: skip
        self.rng = random.Random(f"{sample['seed']}:{proj['tenant']}:{proj['name']}")
        self.sample, self.proj, self.vocab = sample, proj, sample["vocab"]
        self.ids, self.patterns = {"tenant_id": tenant_id, "project_id": project_id}, patterns
        self.spec = load_spec(sample.get("workflow_spec", SPEC_NAME), data)
        self.epoch = self.clock = datetime.fromisoformat(sample["epoch"])
        self.text = _Text(self.rng, sample)
        self.project = SimpleNamespace(name=proj["name"], description=proj.get("description", ""))
        headings = [it["heading"] for it in self._fan_out(self.spec)["items"]]
        if len(headings) != len(self.vocab["areas"]):
            raise ConfigError("sample.yaml vocab.areas must match the spec's fan-out items")
        self.folder = {h: _slug(a) for h, a in zip(headings, self.vocab["areas"], strict=True)}

    def generate(self, batch: _Batch) -> None:
        counts = self.proj["counts"]
        plans = self._plans(int(counts["workflows"]))
        workflows = [(self._workflow(batch, i, p), p) for i, p in enumerate(plans)]
        self._notes(batch, int(counts.get("project_notes", 0)))
        self._syncs(batch, int(counts.get("project_syncs", 0)))
        self._consolidations(batch, int(counts.get("consolidations", 0)))
        self._insights(batch, int(counts.get("workflow_insights", 0)), workflows)

    def _plans(self, n: int) -> list[_WfPlan]:
        areas, kinds = self.vocab["areas"], self.vocab["workflow_kinds"]
        pairs = self.rng.sample([(a, k) for a in range(len(areas)) for k in kinds], n)
        statuses = [st for st, c in self.proj["statuses"].items() for _ in range(int(c))]
        if len(statuses) != n:
            raise ConfigError(f"sample.yaml statuses add up to {len(statuses)}, not {n}")
        self.rng.shuffle(statuses)
        done = [i for i, st in enumerate(statuses) if st == m.COMPLETED]
        auto = set(self.rng.sample(done, min(len(done), self.proj["auto_generated_workflows"])))
        trap = statuses.index(m.FAILED) if m.FAILED in statuses else -1
        return [
            _WfPlan(
                f"{self.proj['name']} {areas[a]} {k} plan", st, a, i in auto or i == trap, i == trap
            )
            for i, ((a, k), st) in enumerate(zip(pairs, statuses, strict=True))
        ]

    @staticmethod
    def _fan_out(spec: Row) -> Row:
        return next(st for st in spec["steps"] if st.get("type") == "fan-out")

    def _spec_for(self, plan: _WfPlan) -> Row:
        spec = copy.deepcopy(self.spec)
        spec["name"] = _slug(plan.name)
        spec["description"] = f"{plan.name}: {self.text.phrase().lower()}."
        fan = self._fan_out(spec)
        keep = set(self.rng.sample(range(len(fan["items"])), self.rng.randint(4, 12)))
        fan["items"] = [it for i, it in enumerate(fan["items"]) if i in keep | {plan.area}]
        if self.rng.random() < 0.25:
            spec["steps"] = [st for st in spec["steps"] if st.get("type") != "review"]
        if not plan.auto:
            spec.pop("generate", None)
        return spec

    def _tick(self, lo: int = 20, hi: int = 240) -> datetime:
        self.clock += timedelta(seconds=self.rng.randint(lo, hi))
        return self.clock

    def _workflow(self, batch: _Batch, i: int, plan: _WfPlan) -> str:
        spec = self._spec_for(plan)
        self.clock = start = self.epoch + timedelta(days=2 * i, minutes=self.rng.randint(0, 480))
        wf_id = m.new_id()
        self._steps(batch, wf_id, spec, plan)
        running = plan.status != m.PENDING
        ended = plan.status in (m.COMPLETED, m.FAILED)
        error = self.sample["credit_error"] if plan.status == m.FAILED else None
        row: Row = {"id": wf_id, **self.ids, "name": plan.name, "status": plan.status}
        row["spec"] = spec
        row |= {"error": error, "started_at": start if running else None}
        return batch.add(m.Workflow, row | {"finished_at": self.clock if ended else None})

    def _states(self, plan: _WfPlan, steps: list[Row]) -> list[m.Status]:
        n = len(steps)
        if plan.status in (m.COMPLETED, m.PENDING):
            return [plan.status] * n
        fan = next(i for i, st in enumerate(steps) if st["type"] == "fan-out")
        if plan.trap:  # the original's resume bug: pending synthesis, completed generated steps
            return [m.COMPLETED] * (fan + 1) + [m.PENDING] * (n - fan - 1)
        now = m.FAILED if plan.status == m.FAILED else m.PENDING
        return [m.COMPLETED] * fan + [now] + [m.PENDING] * (n - fan - 1)

    def _steps(self, batch: _Batch, wf_id: str, spec: Row, plan: _WfPlan) -> None:
        steps = [self._normalise(st, spec["defaults"]) for st in spec["steps"]]
        ctx: Row = {"project": self.project, "steps": {}}
        states = self._states(plan, steps)
        first_pending = states.index(m.PENDING) if m.PENDING in states else -1
        for order, (st, state) in enumerate(zip(steps, states, strict=True)):
            credit = state == m.FAILED or (plan.trap and order == first_pending)
            step_id = m.new_id()
            items = self._items(batch, step_id, st, state, plan, ctx)
            output = self._output(st, ctx, items) if state == m.COMPLETED else None
            ctx["steps"][st["name"]] = SimpleNamespace(output=output or "", items=items)
            row = self._step(wf_id, order, st, state, output, credit)
            batch.add(m.WorkflowStep, row | {"id": step_id})
        if plan.auto:
            batch.extend(m.WorkflowStep, self._auto_steps(wf_id, len(steps), spec))

    @staticmethod
    def _normalise(st: Row, defaults: Row) -> Row:
        kind = st.get("type", "llm")
        llm = kind != "pattern-check"
        return {
            "name": st["name"],
            "type": kind,
            "persona": st.get("persona"),
            "prompt": st.get("prompt", ""),
            "items": st.get("items", []),
            "provider": st.get("provider", defaults.get("provider")) if llm else None,
            "fallback": st.get("fallback", defaults.get("fallback", [])) if llm else [],
            "config": {k: v for k, v in st.items() if k not in _STEP_KEYS},
        }

    def _step(
        self, wf_id: str, order: int, st: Row, state: str, output: str | None, credit: bool,
        auto: bool = False,
    ) -> Row:  # fmt: skip
        provider, model = st["provider"], None
        if state == m.COMPLETED and provider is not None:
            provider, model = self._provider()
        started = self._tick() if state != m.PENDING or credit else None
        done = self._tick(5, 90) if state == m.COMPLETED else None
        row = {k: st[k] for k in ("name", "type", "persona", "prompt", "fallback", "config")}
        return row | {
            "tenant_id": self.ids["tenant_id"], "workflow_id": wf_id, "order": order,
            "provider": provider, "model": model, "status": state, "output": output,
            "auto_generated": auto, "error": self.sample["credit_error"] if credit else None,
            "started_at": started, "completed_at": done,
        }  # fmt: skip

    def _provider(self) -> tuple[str, str]:
        provs = self.sample["providers"]
        p = self.rng.choices(provs, weights=[int(x["weight"]) for x in provs])[0]
        return str(p["name"]), str(p["model"])

    def _item_counts(self, n: int, state: str, plan: _WfPlan) -> tuple[int, int]:
        if state == m.COMPLETED:
            return n, 0
        partial = state == m.FAILED or plan.status == m.PAUSED  # items committed so far
        return (self.rng.randint(1, n - 1), int(state == m.FAILED)) if partial else (0, 0)

    def _items(
        self, batch: _Batch, step_id: str, st: Row, state: str, plan: _WfPlan, ctx: Row
    ) -> list[SimpleNamespace]:
        if st["type"] != "fan-out":
            return []
        done, failed = self._item_counts(len(st["items"]), state, plan)
        template = _JINJA.from_string(st["prompt"])
        finished: list[SimpleNamespace] = []
        for idx, it in enumerate(st["items"][: done + failed]):
            item = SimpleNamespace(heading=it["heading"], body=it["body"], index=idx)
            output = self._design(it) if (ok := idx < done) else None
            provider = self._provider()[0] if ok else st["provider"]
            batch.add(m.StepItem, {
                "tenant_id": self.ids["tenant_id"], "step_id": step_id, "idx": idx,
                "heading": it["heading"], "input": template.render(**ctx, item=item),
                "output": output, "status": m.COMPLETED if ok else m.FAILED,
                "error": None if ok else self.sample["credit_error"], "provider": provider,
            })  # fmt: skip
            finished += [SimpleNamespace(heading=it["heading"], output=output)] if ok else []
        return finished

    def _output(self, st: Row, ctx: Row, items: list[SimpleNamespace]) -> str:
        if st["type"] == "fan-out":
            return "\n\n".join(i.output for i in items)
        headings = [i.heading for s in ctx["steps"].values() for i in s.items]
        kind = st["type"] if st["type"] in self.text.templates else "llm"
        env = {"project": self.project.name, "headings": headings, "patterns": self.patterns}
        return self.text.render(kind, **env, **st["config"])

    def _design(self, item: Row) -> str:
        words = [w for w in re.findall(r"[a-z]+", item["heading"].lower()) if w != "and"][:2]
        model = "".join(w.capitalize() for w in words)
        env = {"model": model, "router": model[0].lower() + model[1:]}
        env["slug"] = self.folder[item["heading"]]
        return self.text.render("fan-out-item", heading=item["heading"], body=item["body"], **env)

    def _auto_steps(self, wf_id: str, start: int, spec: Row) -> list[Row]:
        # the engine's own generated steps (names, prompts, config), already completed
        source = spec["generate"]["implementation_prompts"]["from"]
        items = next(st for st in spec["steps"] if st["name"] == source)["items"]
        found = {source: [(i, it["heading"]) for i, it in enumerate(items)]}
        rows = []
        for order, wanted in enumerate(desired_generated(parse_spec(spec), found), start):
            gen = wanted.as_values()
            step = self._normalise(gen, spec["defaults"]) | {"config": gen["config"]}
            out = self._generated_output(gen, items)
            rows.append(self._step(wf_id, order, step, m.COMPLETED, out, False, True))
        return rows

    def _generated_output(self, gen: Row, items: list[Row]) -> str:
        if gen["type"] == "consistency-check":
            return self.text.render("consistency-check", headings=[it["heading"] for it in items])
        it = items[gen["config"]["item_idx"]]
        env = {"heading": it["heading"], "body": it["body"], "slug": self.folder[it["heading"]]}
        return self.text.render("implementation-prompt", project=self.project.name, **env)

    def _notes(self, batch: _Batch, n: int) -> None:
        for _ in range(n):
            title = f"{self.text.pick('note_topics')}: {self.text.phrase()}"
            body = f"{self.text.paragraph(3)}\n\n{self.text.bullets(3)}"
            batch.add(m.ProjectNote, {**self.ids, "title": title, "body": body})

    def _syncs(self, batch: _Batch, n: int) -> None:
        sources = self.vocab["sync_sources"]
        for i in range(n):
            status = self.text.pick("sync_statuses")
            got, changed = self.rng.randint(3, 400), self.rng.randint(0, 60)
            summary = f"Imported {got} items, updated {changed}. {self.text.sentence()}"
            at = self.epoch + timedelta(days=30, hours=6 * i)
            row = {"source": sources[i % len(sources)], "status": status, "summary": summary}
            batch.add(m.ProjectSync, {**self.ids, **row, "synced_at": at})

    def _consolidations(self, batch: _Batch, n: int) -> None:
        for _ in range(n):
            a, b = self.rng.sample(self.vocab["areas"], 2)
            title = f"{self.text.pick('quarters')} consolidation: {a} and {b}"
            summary = f"{self.text.paragraph(3)}\n\n{self.text.bullets(4)}"
            batch.add(m.Consolidation, {**self.ids, "title": title, "summary": summary})

    def _insights(self, batch: _Batch, n: int, workflows: list[tuple[str, _WfPlan]]) -> None:
        for j in range(n):
            wf_id, plan = workflows[j] if j < len(workflows) else self.rng.choice(workflows)
            area = self.vocab["areas"][plan.area]
            row = {"workflow_id": wf_id, "kind": self.text.pick("insight_kinds")}
            row["content"] = f"{area.capitalize()}: {self.text.sentence()}"
            batch.add(m.WorkflowInsight, {**self.ids, **row})
