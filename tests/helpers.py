"""Small builders shared by tests: a minimal store and a three-step offline spec."""

from __future__ import annotations

from typing import Any

from nyxnb.store import Store
from nyxnb.store.models import Persona, Project, Tenant

PERSONAS = ("Athena", "Cael", "Harmonia", "Nemesis", "Aristaeus")


def minimal(store: Store) -> Store:
    """The tenant, project and personas a run needs (faster than the full sample data)."""
    with store.session() as s:
        tenant = Tenant(slug="nyx", name="Nyx")
        s.add(tenant)
        s.flush()
        s.add(Project(tenant_id=tenant.id, name="BRbase", description="A bug tracker."))
        s.add_all(Persona(name=n, system_prompt=f"You are {n}.") for n in PERSONAS)
    return store


def three_steps(
    name: str, n_items: int, *, generate: bool = False, **defaults: Any
) -> dict[str, Any]:
    """analysis -> an n-item fan-out -> synthesis, on the offline provider, cache off."""
    body: dict[str, Any] = {
        "name": name,
        "defaults": {"provider": "offline", "fallback": [], "cache": False, **defaults},
        "steps": [
            {"name": "analysis", "persona": "Athena", "prompt": "Analyse {{ project.name }}"},
            {"name": "features", "type": "fan-out", "persona": "Cael",
             "items": [{"heading": f"Feature {i}", "body": f"body {i}"} for i in range(n_items)],
             "prompt": "Design {{ item.heading }}"},
            {"name": "synthesis", "type": "synthesis", "persona": "Harmonia",
             "prompt": "{% for i in steps.features.items %}{{ i.heading }};{% endfor %}"},
        ],
    }  # fmt: skip
    if generate:
        body["generate"] = {
            "consistency_check": {"persona": "Nemesis"},
            "implementation_prompts": {"from": "features", "persona": "Aristaeus"},
        }
    return body


def claimed_fan_out_step(store: Store, spec_path: str, n: int) -> Any:
    """Seed, queue the fan-out spec at ``spec_path`` and write its ``n`` pending item rows:
    the step a worker's item claims work on (for claim and fencing tests)."""
    import nyxnb
    from nyxnb.engine.durable.items import sync_items
    from nyxnb.engine.durable.records import load_steps
    from nyxnb.store.seed import seed

    seed(store)
    workflow_id = nyxnb.submit(spec_path, tenant="nyx", project="BRbase", store=store)
    step = load_steps(store, workflow_id)[0]
    sync_items(store, step, [(f"h{i}", f"in{i}", f"x{i}") for i in range(n)])
    return step


def fan_out_spec(name: str, n: int, chain: tuple[str, ...], **defaults: Any) -> dict[str, Any]:
    """One n-item fan-out on ``chain`` (first provider, then its fallbacks), cache off."""
    return {
        "name": name,
        "defaults": {"provider": chain[0], "fallback": list(chain[1:]), "cache": False, **defaults},
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            }
        ],
    }
