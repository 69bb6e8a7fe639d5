"""tenancy: refuse an inserted row whose parent (a foreign key) belongs to another tenant

One trigger per tenant-owned foreign key, checked by the database on every INSERT -- ORM
flushes, bulk Core ``insert()`` executemany, raw SQL, every process -- at the cost of one
primary-key lookup per row (the foreign key already does the same lookup).  The trigger raises
an error whose text starts with ``nyxnb-tenancy:``; :mod:`nyxnb.store.database` turns it into
:class:`nyxnb.errors.CrossTenantWrite`.  Why not a composite foreign key ``(tenant_id, id)``:
half of these keys are ``ON DELETE SET NULL``, which would null ``tenant_id`` too (NOT NULL), and
SQLite would rebuild every child table to add one.  Updates are not checked here: a tenant move
re-points children inside its own transaction; tenant sessions check updates in Python.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (child table, foreign-key column, parent table); tests/test_tenancy_writes.py keeps this
#: equal to the models' tenant-owned foreign keys.
PARENT_KEYS: tuple[tuple[str, str, str], ...] = (
    ("consolidations", "project_id", "projects"),
    ("project_notes", "project_id", "projects"),
    ("project_syncs", "project_id", "projects"),
    ("repositories", "project_id", "projects"),
    ("workflows", "revision_of", "workflows"),
    ("workflows", "cloned_from_id", "workflows"),
    ("workflows", "project_id", "projects"),
    ("code_patterns", "repository_id", "repositories"),
    ("workflow_insights", "project_id", "projects"),
    ("workflow_insights", "workflow_id", "workflows"),
    ("workflow_steps", "workflow_id", "workflows"),
    ("llm_calls", "step_id", "workflow_steps"),
    ("llm_calls", "workflow_id", "workflows"),
    ("provider_batches", "workflow_id", "workflows"),
    ("provider_batches", "step_id", "workflow_steps"),
    ("step_items", "step_id", "workflow_steps"),
)


def _name(child: str, column: str) -> str:
    return f"nyx_tenant_{child}_{column}"


def _message(child: str, column: str, parent: str) -> str:
    return f"nyxnb-tenancy: {child}.{column} points at a {parent} row of another tenant"


def _sqlite(child: str, column: str, parent: str, indexed_by: str = "") -> str:
    """The trigger; ``indexed_by`` names a covering ``(id, tenant_id)`` index (revision 0014)."""
    via = f" INDEXED BY {indexed_by}" if indexed_by else ""
    return (
        f"CREATE TRIGGER {_name(child, column)} BEFORE INSERT ON {child} "
        f"WHEN NEW.{column} IS NOT NULL AND EXISTS (SELECT 1 FROM {parent}{via} "
        f"WHERE {parent}.id = NEW.{column} AND {parent}.tenant_id <> NEW.tenant_id) "
        f"BEGIN SELECT RAISE(ABORT, '{_message(child, column, parent)}'); END"
    )


def _postgresql(child: str, column: str, parent: str) -> list[str]:
    name = _name(child, column)
    return [
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF NEW.{column} IS NOT NULL AND EXISTS (SELECT 1 FROM {parent} p "
        f"WHERE p.id = NEW.{column} AND p.tenant_id <> NEW.tenant_id) THEN "
        f"RAISE EXCEPTION '{_message(child, column, parent)}' USING ERRCODE = '23503'; "
        "END IF; RETURN NEW; END $$",
        f"CREATE TRIGGER {name} BEFORE INSERT ON {child} FOR EACH ROW EXECUTE FUNCTION {name}()",
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for child, column, parent in PARENT_KEYS:
        if dialect == "postgresql":
            for sql in _postgresql(child, column, parent):
                op.execute(sql)
        else:
            op.execute(_sqlite(child, column, parent))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for child, column, _parent in PARENT_KEYS:
        name = _name(child, column)
        suffix = f" ON {child}" if dialect == "postgresql" else ""
        op.execute(f"DROP TRIGGER IF EXISTS {name}{suffix}")
        if dialect == "postgresql":
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
