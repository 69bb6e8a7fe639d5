"""Write rows out as a table, batch by batch: CSV, JSONL or Parquet (chosen by the suffix).

Rows arrive as batches of dicts with the same columns; each batch is written and dropped, so a
table of any length is written in the memory of one batch.  Nested values (lists, objects) are
written as JSON text in CSV and Parquet, as JSON in JSONL.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nyxnb.errors import ConfigError

FORMATS = (".csv", ".jsonl", ".parquet")


def _flat(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


def write_table(
    batches: Iterable[list[dict[str, Any]]], path: str | Path, columns: Sequence[str]
) -> int:
    """Write ``batches`` of rows to ``path`` (.csv, .jsonl, .parquet); returns the row count."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(
            f"cannot export to {out.name!r}: unknown format",
            hint=f"name the file with one of: {', '.join(FORMATS)}",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        return _parquet(batches, out, columns)
    count = 0
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns)) if suffix == ".csv" else None
        if writer is not None:
            writer.writeheader()
        for batch in batches:
            if writer is not None:
                writer.writerows({k: _flat(v) for k, v in row.items()} for row in batch)
            else:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch)
            count += len(batch)
    return count


def _parquet(batches: Iterable[list[dict[str, Any]]], out: Path, columns: Sequence[str]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, schema, count = None, None, 0
    try:
        for batch in batches:
            rows = [{c: _flat(row.get(c)) for c in columns} for row in batch]
            if schema is None:
                schema = _schema(pa.Table.from_pylist(rows).schema)
                writer = pq.ParquetWriter(out, schema)
            assert writer is not None
            writer.write_table(_arrow(rows, schema))
            count += len(batch)
        if writer is None:  # no rows: an empty file with text columns
            empty = pa.schema([(c, pa.string()) for c in columns])
            pq.write_table(empty.empty_table(), out)
    finally:
        if writer is not None:
            writer.close()
    return count


def _schema(inferred: Any) -> Any:
    """The first batch's types; a column with no value there is text."""
    import pyarrow as pa

    return pa.schema(
        [pa.field(f.name, pa.string() if pa.types.is_null(f.type) else f.type) for f in inferred]
    )


def _arrow(rows: list[dict[str, Any]], schema: Any) -> Any:
    """A batch as an Arrow table of ``schema``; values of another type are converted or nulled."""
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        fixed = [{f.name: _coerce(row.get(f.name), f.type) for f in schema} for row in rows]
        return pa.Table.from_pylist(fixed, schema=schema)


def _coerce(value: Any, kind: Any) -> Any:
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return str(value)
    try:
        if pa.types.is_integer(kind):
            return int(value)
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_boolean(kind):
            return bool(value)
    except (TypeError, ValueError):
        return None
    return value
