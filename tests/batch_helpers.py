"""What the provider-batch tests share: the batched spec, the fan-out's rows, a killable run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from nyxnb.store import Store
from nyxnb.store.models import LlmCall, ProviderBatch, StepItem, WorkflowStep

N_ITEMS = 12
FAST_POLL = {"initial_s": 0.05, "max_s": 0.2, "multiplier": 2.0}


def batch_spec(
    provider: str = "anthropic", batch: bool = True, fallback: str = "resubmit", n: int = N_ITEMS
) -> dict[str, Any]:
    """A live analysis step, then an ``n``-item fan-out with ``batch`` on ``provider``."""
    return {
        "name": "batched",
        "defaults": {
            "provider": provider,
            "fallback": [],
            "cache": False,
            "batch_fallback": fallback,
            "batch_poll": FAST_POLL,
        },
        "steps": [
            {"name": "analysis", "persona": "Athena", "prompt": "Analyse {{ project.name }}"},
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "batch": batch,
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": "Design {{ item.heading }}",
            },
        ],
    }


def fan_out(
    store: Store, workflow_id: str, step: str = "features"
) -> tuple[list[StepItem], list[LlmCall], list[ProviderBatch]]:
    """The items, ledger rows and provider batches of a workflow's step."""
    with store.session() as s:
        row = s.scalar(
            select(WorkflowStep).where(
                WorkflowStep.workflow_id == workflow_id, WorkflowStep.name == step
            )
        )
        assert row is not None
        items = list(s.scalars(select(StepItem).where(StepItem.step_id == row.id)))
        calls = list(s.scalars(select(LlmCall).where(LlmCall.step_id == row.id)))
        query = select(ProviderBatch).where(ProviderBatch.step_id == row.id)
        batches = list(s.scalars(query.order_by(ProviderBatch.created_at)))
        s.expunge_all()
    return items, calls, batches


def ok_items(calls: list[LlmCall]) -> list[int | None]:
    """The item index of every successful ledger row, sorted (each item once: 0..n-1)."""
    return sorted(c.item_idx for c in calls if c.outcome == "ok")


def spawn_run(spec: dict[str, Any], tmp_path: Path, db_url: str) -> subprocess.Popen[str]:
    """``nyxnb run SPEC --json`` in a child process (a test may kill -9 it)."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "NYXNB_DB_URL": db_url}
    cmd = [sys.executable, "-m", "nyxnb", "run", str(spec_path), "--tenant", "nyx",
           "--project", "BRbase", "--json"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
