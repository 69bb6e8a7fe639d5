"""The values of a tenant move: the plan, its conflicts and resolutions, the result, row codecs.

The functions that make and apply them, and what a move does, are in :mod:`nyxnb.tenants.migrate`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Date, DateTime, LargeBinary, Numeric, Table

from nyxnb.errors import ConfigError, MigrationConflict

if TYPE_CHECKING:
    import pandas as pd


ROOT = "projects"
POLICIES = ("abort", "rename", "merge")


@dataclass(frozen=True)
class TablePlan:
    """Rows of one table that move, with a content checksum (all columns but tenant/updated_at)."""

    table: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class Conflict:
    """A target-tenant row with the same tenant-scoped unique key as a moved row."""

    table: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    source_id: str
    target_id: str
    dependents: int
    removable: bool
    container: bool
    rename_column: str | None = None
    rename_to: str | None = None
    #: (column, parent table, parent id of the moved row, parent id of the target row)
    parents: tuple[tuple[str, str, str | None, str | None], ...] = ()

    def describe(self) -> str:
        """``projects name='BRbase'`` -- the table and the clashing key."""
        pairs = ", ".join(f"{c}={v!r}" for c, v in zip(self.columns, self.key, strict=True))
        return f"{self.table} {pairs}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Conflict:
        """Rebuild from :meth:`MigrationPlan.to_dict` output."""
        return cls(
            **{k: v for k, v in d.items() if k not in ("columns", "key", "parents")},
            columns=tuple(d["columns"]),
            key=tuple(d["key"]),
            parents=tuple((p[0], p[1], p[2], p[3]) for p in d.get("parents", ())),
        )


@dataclass(frozen=True)
class Reference:
    """A foreign key that would cross tenants after the move; detached (set NULL) on apply."""

    table: str
    column: str
    row_id: str
    value: str
    moved: bool
    nullable: bool

    def describe(self) -> str:
        """One line naming the row and what it points at."""
        side = "moved" if self.moved else "staying"
        return f"{self.table}.{self.column} of {side} row {self.row_id} -> {self.value}"


@dataclass(frozen=True)
class Resolution:
    """What apply does about one conflict: ``remove``, ``rename`` or ``merge``."""

    action: str
    table: str
    source_id: str
    target_id: str
    column: str | None = None
    new_value: str | None = None

    def __str__(self) -> str:
        if self.action == "remove":
            return f"remove empty {self.table} row {self.target_id} of the target"
        if self.action == "rename":
            return (
                f"rename moved {self.table} row {self.source_id}: {self.column}={self.new_value!r}"
            )
        return f"merge moved {self.table} row {self.source_id} into {self.target_id}"


@dataclass(frozen=True)
class MigrationPlan:
    """What moving a project to another tenant would do; print it, diff it, apply it."""

    project_id: str
    project: str
    source_id: str
    source: str
    target_id: str
    target: str
    suffix: str
    tables: tuple[TablePlan, ...]
    conflicts: tuple[Conflict, ...] = ()
    references: tuple[Reference, ...] = ()
    planned_at: str = field(default="", compare=False)

    @property
    def counts(self) -> dict[str, int]:
        """Table -> rows to move."""
        return {t.table: t.rows for t in self.tables}

    @property
    def total_rows(self) -> int:
        """Rows to move across all tables."""
        return sum(t.rows for t in self.tables)

    def resolve(self, on_conflict: str = "abort") -> tuple[Resolution, ...]:
        """The resolution of every conflict under a policy, or :class:`MigrationConflict`."""
        return resolve_conflicts(self, on_conflict)

    def diff(self, other: MigrationPlan) -> list[str]:
        """What differs from ``other`` (a newer plan of the same move), one line per change."""
        mine, theirs = {t.table: t for t in self.tables}, {t.table: t for t in other.tables}
        out = []
        for name in sorted(mine.keys() | theirs.keys()):
            a, b = mine.get(name), theirs.get(name)
            if a is None or b is None:
                out.append(f"table {name} {'appeared' if a is None else 'disappeared'}")
            elif a.rows != b.rows:
                out.append(f"{name} has {b.rows} rows to move, the plan says {a.rows}")
            elif a.checksum != b.checksum:
                out.append(f"{name} rows changed")
        if self.conflicts != other.conflicts:
            n, m = len(other.conflicts), len(self.conflicts)
            out.append(f"{n} conflicts with {other.target}, {m} planned")
        if self.references != other.references:
            out.append("cross-tenant foreign keys changed")
        if (self.project, self.source, self.target) != (other.project, other.source, other.target):
            out.append("the project or a tenant was renamed")
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    def to_json(self, **kw: Any) -> str:
        """The plan as JSON text."""
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MigrationPlan:
        """Rebuild a plan from :meth:`to_dict` output (or the CLI's ``--json`` output)."""
        if "tables" not in data and "plan" in data:
            data = data["plan"]
        try:
            scalars = {k: data[k] for k in _PLAN_SCALARS if k in data}
            return cls(
                **scalars,
                tables=tuple(TablePlan(**t) for t in data["tables"]),
                conflicts=tuple(Conflict.from_dict(c) for c in data.get("conflicts", ())),
                references=tuple(Reference(**r) for r in data.get("references", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"not a migration plan: {exc}", hint="use the output of `nyxnb migrate --json`"
            ) from None

    @classmethod
    def from_json(cls, text: str) -> MigrationPlan:
        """Rebuild a plan from :meth:`to_json` text."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not a migration plan: {exc}") from None

    def to_dataframe(self) -> pd.DataFrame:
        """One row per table: rows to move, conflicts, references to detach, checksum."""
        import pandas as pd

        rows = [
            {
                "table": t.table,
                "rows": t.rows,
                "conflicts": sum(c.table == t.table for c in self.conflicts),
                "detach": sum(r.table == t.table for r in self.references),
                "checksum": t.checksum,
            }
            for t in self.tables
        ]
        return pd.DataFrame(rows, columns=["table", "rows", "conflicts", "detach", "checksum"])

    def describe(self, on_conflict: str | None = None) -> str:
        """The readable plan; with a policy, also each resolution or why it would refuse."""
        lines = [str(self)]
        if on_conflict is not None:
            try:
                chosen = self.resolve(on_conflict)
                lines.append(f"Resolutions (--on-conflict {on_conflict}):")
                lines += [f"  {r}" for r in chosen] or ["  (nothing to resolve)"]
            except MigrationConflict as exc:
                lines.append(f"Refused under --on-conflict {on_conflict}: {exc}")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"Move project {self.project!r} ({self.project_id}) "
            f"from tenant {self.source} to {self.target}: {self.total_rows} rows"
        )
        width = max([len(t.table) for t in self.tables] + [5])
        lines = [head, f"  {'table':<{width}}  {'rows':>8}  checksum"]
        lines += [f"  {t.table:<{width}}  {t.rows:>8}  {t.checksum[:12]}" for t in self.tables]
        lines.append(f"Conflicts with {self.target}: {len(self.conflicts) or 'none'}")
        for c in self.conflicts:
            state = (
                "empty, remove it"
                if c.removable
                else f"{c.dependents} dependent rows, needs a policy"
            )
            lines.append(f"  {c.describe()}: target row {c.target_id} ({state})")
        if self.references:
            lines.append(f"Foreign keys to detach (set NULL): {len(self.references)}")
            lines += [f"  {r.describe()}" for r in self.references]
        return "\n".join(lines)


_PLAN_SCALARS = (
    "project_id",
    "project",
    "source_id",
    "source",
    "target_id",
    "target",
    "suffix",
    "planned_at",
)


@dataclass(frozen=True)
class MoveResult:
    """What :func:`apply_migration` or :func:`reverse_migration` did."""

    move_id: str
    action: str
    plan: MigrationPlan
    resolutions: tuple[Resolution, ...]
    counts: tuple[tuple[str, int], ...]
    detached: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the plan itself is left out; it is in the move row)."""
        return {
            "move_id": self.move_id,
            "action": self.action,
            "project": self.plan.project,
            "source": self.plan.source,
            "target": self.plan.target,
            "counts": dict(self.counts),
            "resolutions": [asdict(r) for r in self.resolutions],
            "detached": self.detached,
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        src, dst = (
            (self.plan.source, self.plan.target)
            if self.action == "apply"
            else (self.plan.target, self.plan.source)
        )
        moved = ", ".join(f"{n} {t}" for t, n in self.counts if n)
        lines = [f"moved project {self.plan.project!r} from {src} to {dst}: {moved}"]
        lines += [f"  {r}" for r in self.resolutions]
        if self.detached:
            lines.append(f"  detached {self.detached} cross-tenant foreign keys")
        if self.action == "apply":
            lines.append(f"move {self.move_id}; undo with `nyxnb migrate --reverse {self.move_id}`")
        else:
            lines.append(f"reversed move {self.move_id}")
        return "\n".join(lines)


def resolve_conflicts(plan: MigrationPlan, on_conflict: str) -> tuple[Resolution, ...]:
    """The resolution of each conflict under a policy; :class:`MigrationConflict` if any is left."""
    if on_conflict not in POLICIES:
        raise ConfigError(
            f"unknown conflict policy {on_conflict!r}", hint=f"choose one of {', '.join(POLICIES)}"
        )
    problems = [f"{r.describe()} is NOT NULL" for r in plan.references if not r.nullable]
    merged: dict[tuple[str, str], str] = {}
    chosen: list[Resolution] = []
    for c in plan.conflicts:
        found = _resolve_one(c, on_conflict, merged)
        if isinstance(found, str):
            problems.append(found)
        else:
            chosen.append(found)
    if problems:
        raise MigrationConflict(
            f"cannot move project {plan.project!r} to {plan.target}: " + "; ".join(problems),
            hint="nothing was written; choose --on-conflict rename or merge, "
            "or empty the target rows",
        )
    return tuple(chosen)


def _resolve_one(c: Conflict, policy: str, merged: dict[tuple[str, str], str]) -> Resolution | str:
    if c.removable:
        return Resolution("remove", c.table, c.source_id, c.target_id)
    if policy == "rename" and c.rename_to is not None:
        return Resolution("rename", c.table, c.source_id, c.target_id, c.rename_column, c.rename_to)
    if policy == "merge" and _mergeable(c, merged):
        merged[(c.table, c.source_id)] = c.target_id
        return Resolution("merge", c.table, c.source_id, c.target_id)
    why = f"{c.describe()} exists in the target as row {c.target_id} with {c.dependents} dependents"
    if policy == "rename":
        why += " (renaming is impossible: no free text key)"
    elif policy == "merge":
        why += " (merge is not meaningful here: its parent is not merged)"
    return why


def _mergeable(c: Conflict, merged: Mapping[tuple[str, str], str]) -> bool:
    if not c.container:
        return False
    if c.table == ROOT:
        return True
    linked = [(table, mine, theirs) for _col, table, mine, theirs in c.parents if mine]
    return bool(linked) and all(merged.get((t, mine)) == theirs for t, mine, theirs in linked)


class Digest:
    """An order-free checksum: the sum of per-row sha256 prefixes modulo 2**128, and a count."""

    __slots__ = ("rows", "total")
    MOD = 1 << 128

    def __init__(self, rows: int = 0, total: int = 0) -> None:
        self.rows, self.total = rows, total

    def add(self, values: Iterable[Any]) -> None:
        """Add one row of text values."""
        line = "\x1f".join(["\x00" if v is None else str(v) for v in values])
        self.total += int.from_bytes(hashlib.sha256(line.encode()).digest()[:16], "big")
        self.rows += 1

    @property
    def value(self) -> int:
        """The checksum as an integer."""
        return self.total % self.MOD

    @property
    def hex(self) -> str:
        """The checksum as 32 hex digits."""
        return f"{self.value:032x}"


def canon(value: Any) -> str:
    """A backend-independent text form of a column value (for keys shown in plans)."""
    if value is None:
        return "\x00"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def dump_row(table: Table, row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row as JSON-ready values (dates as ISO text, decimals as text, bytes as hex)."""
    out: dict[str, Any] = {}
    for col in table.c:
        value = row[col.name]
        if isinstance(value, datetime | date):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, bytes | memoryview):
            value = bytes(value).hex()
        out[col.name] = value
    return out


def load_row(table: Table, data: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`dump_row`, by column type."""
    out: dict[str, Any] = {}
    for name, value in data.items():
        kind = table.c[name].type
        if value is not None and isinstance(kind, DateTime):
            value = datetime.fromisoformat(value)
        elif value is not None and isinstance(kind, Date):
            value = date.fromisoformat(value)
        elif isinstance(value, str) and isinstance(kind, Numeric):
            value = Decimal(value)
        elif value is not None and isinstance(kind, LargeBinary):
            value = bytes.fromhex(value)
        out[name] = value
    return out
