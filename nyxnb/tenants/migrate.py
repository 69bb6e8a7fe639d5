"""Move a project between tenants: plan, review, apply in one transaction, verify, reverse.

    plan = plan_migration(store, "BRbase", "nyx", "clarait")   # writes nothing
    print(plan); plan.to_dataframe(); plan.to_json()
    move = apply_migration(store, plan, on_conflict="abort")   # or "rename" / "merge"
    reverse_migration(store, move.move_id)

The tables to move are found from the live schema (every table with ``tenant_id`` reachable from
``projects`` through foreign keys), so a table added later moves too.  A conflict is a row of the
target tenant with the same tenant-scoped unique key as a moved row.  A target row with no
dependent data (the empty duplicate repository and project of the original incident) is removed
and restored by :func:`reverse_migration`; any other conflict needs a policy:

- ``abort`` (default): refuse, naming each conflicting row;
- ``rename``: append the plan's ``suffix`` to the moved row's key column (``name``, ``repo``);
- ``merge``: the moved row's children go under the existing target row (projects, and their
  containers such as repositories when the parent is merged too), the moved row is dropped.

A foreign key that would cross tenants after the move (a workflow of another project cloned from
a moved one) is *detached* (set NULL) when the column is nullable, and restored on reverse.
The machinery lives in :mod:`~nyxnb.tenants.schema`, :mod:`~nyxnb.tenants.checksums`,
:mod:`~nyxnb.tenants.plan`, :mod:`~nyxnb.tenants.apply` and :mod:`~nyxnb.tenants.reverse`;
the values in :mod:`~nyxnb.tenants.values`; this module holds the public functions.
"""

from __future__ import annotations

from sqlalchemy import true

from nyxnb.store import Store
from nyxnb.tenants.apply import apply_plan
from nyxnb.tenants.checksums import digests
from nyxnb.tenants.plan import read_snapshot, survey
from nyxnb.tenants.reverse import reverse_move
from nyxnb.tenants.schema import live_tables
from nyxnb.tenants.values import (
    POLICIES,
    Conflict,
    MigrationPlan,
    MoveResult,
    Reference,
    Resolution,
    TablePlan,
)


def plan_migration(
    store: Store, project: str, source: str, target: str, *, suffix: str | None = None
) -> MigrationPlan:
    """Survey moving ``project`` (name or id) from tenant ``source`` to ``target``; no writes."""
    with read_snapshot(store.engine) as conn:
        return survey(conn, project, source, target, suffix=suffix)


def apply_migration(store: Store, plan: MigrationPlan, on_conflict: str = "abort") -> MoveResult:
    """Apply ``plan`` in one verified transaction; refuses stale plans and unresolved conflicts."""
    return apply_plan(store, plan, on_conflict)


def reverse_migration(store: Store, move_id: str) -> MoveResult:
    """Undo an applied move (removed empty duplicates included), verified like the apply."""
    return reverse_move(store, move_id)


def table_checksums(store: Store, tables: list[str] | None = None) -> dict[str, str]:
    """A content checksum of every row and column of each table (for before/after comparisons)."""
    with read_snapshot(store.engine) as conn:
        live = live_tables(conn)
        names = sorted(live) if tables is None else list(tables)
        found = digests(conn, [(live[n], true()) for n in names], everything=True)
        return {n: d.hex for n, d in zip(names, found, strict=True)}


__all__ = [
    "POLICIES",
    "Conflict",
    "MigrationPlan",
    "MoveResult",
    "Reference",
    "Resolution",
    "TablePlan",
    "apply_migration",
    "plan_migration",
    "reverse_migration",
    "table_checksums",
]
