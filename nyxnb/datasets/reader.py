"""Read a dataset with DuckDB and stream its rows in batches, checking its key column.

A dataset is a file (``.csv``/``.tsv``, ``.json``/``.jsonl``/``.ndjson``, ``.parquet``), DuckDB SQL
over files (``sql:``; relative paths resolve against the spec's folder), or from Python a
pandas/polars DataFrame, an Arrow table or a list of dicts.  Rows come out as ``(key, columns)``
in batches of :data:`BATCH_ROWS` through an Arrow record-batch reader: the file is never loaded
whole.  A key that repeats or is missing is a :class:`~nyxnb.errors.SpecError` naming the rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from nyxnb.errors import SpecError
from nyxnb.sources import PYTHON_DATA, ItemsSource

#: Rows per batch read from DuckDB (and written to the store).
BATCH_ROWS = 2000
_READERS = {
    ".csv": "read_csv",
    ".tsv": "read_csv",
    ".json": "read_json_auto",
    ".jsonl": "read_json_auto",
    ".ndjson": "read_json_auto",
    ".parquet": "read_parquet",
}
_SHOWN = 5  # rows named in a key error


@dataclass(frozen=True)
class DatasetRow:
    """One row of a dataset: its key (as text) and its columns (JSON-ready values)."""

    key: str
    columns: dict[str, Any]


def jsonable(value: Any) -> Any:
    """A dataset value as JSON can hold it (dates as ISO text, NaN as null, decimals as float)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class DatasetRows:
    """An open dataset: its columns, a key check, and its rows in batches."""

    def __init__(self, source: ItemsSource, where: str = "items_from") -> None:
        self.source, self.where = source, where
        self.con = duckdb.connect()
        if source.base_dir:
            self.con.execute("SET file_search_path = ?", [source.base_dir])
        try:
            self.rel = self._relation()
            self.columns = list(self.rel.columns)
        except (duckdb.Error, OSError, ValueError, TypeError) as exc:
            self.close()
            raise SpecError(
                f"cannot read the dataset: {str(exc).splitlines()[0]}",
                field=where,
                hint="check the path, the file's format and the SQL",
            ) from None
        if source.key not in self.columns:
            self.close()
            raise SpecError(
                f"key column {source.key!r} is not in the dataset",
                field=f"{where}.key",
                hint=f"columns: {', '.join(self.columns)}",
            )

    def _relation(self) -> duckdb.DuckDBPyRelation:
        source = self.source
        if source.sql is not None:
            return self.con.sql(source.sql)
        if source.path is not None:
            path = Path(source.path)
            reader = _READERS.get(path.suffix.lower())
            if reader is None:
                known = ", ".join(_READERS)
                raise ValueError(f"unknown dataset format {path.suffix!r} (use {known})")
            if not path.is_file():
                raise ValueError(f"dataset file {str(path)!r} not found")
            return self.con.sql(f"SELECT * FROM {reader}(?)", params=[str(path)])  # type: ignore[call-arg]
        return self._from_python(source.data)

    def _from_python(self, data: Any) -> duckdb.DuckDBPyRelation:
        if isinstance(data, str) and data == PYTHON_DATA:
            raise ValueError("the dataset was handed over from Python; pass it again (`data:`)")
        if isinstance(data, list):
            import pyarrow as pa

            return self.con.from_arrow(pa.Table.from_pylist([dict(r) for r in data]))
        if hasattr(data, "to_arrow"):  # polars
            return self.con.from_arrow(data.to_arrow())
        if hasattr(data, "schema") and hasattr(data, "to_batches"):  # an Arrow table
            return self.con.from_arrow(data)
        if hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas
            return self.con.from_df(data)
        raise TypeError(f"unsupported dataset type {type(data).__name__}")

    def count(self) -> int:
        """How many rows the dataset has."""
        return int(self.rel.aggregate("count(*)").fetchall()[0][0])

    def check_keys(self) -> None:
        """Raise :class:`SpecError` naming the rows whose key is missing or repeated."""
        key = _quoted(self.source.key)
        blank = f"{key} IS NULL OR trim(CAST({key} AS VARCHAR)) = ''"
        counts = self.rel.aggregate(
            f"count(*) FILTER (WHERE {blank}), count(*) - count(DISTINCT CAST({key} AS VARCHAR))"
        ).fetchall()[0]
        if not any(counts):  # the common case: one pass, no row numbers kept
            return
        numbered = self.rel.select(f"{key} AS k, row_number() OVER () AS n")
        missing = [
            int(r[0])
            for r in numbered.filter("k IS NULL OR trim(CAST(k AS VARCHAR)) = ''")
            .select("n")
            .limit(_SHOWN)
            .fetchall()
        ]
        if missing:
            raise SpecError(
                f"no {self.source.key!r} in row(s) {_rows(missing)}",
                field=f"{self.where}.key",
                hint="every row needs a key: it identifies the row across runs",
            )
        repeated = (
            numbered.aggregate("CAST(k AS VARCHAR) AS k, list(n ORDER BY n) AS ns, count(*) AS c")
            .filter("c > 1")
            .order("ns[1]")
            .limit(_SHOWN)
            .fetchall()
        )
        if repeated:
            shown = "; ".join(f"{k!r} in rows {_rows(ns)}" for k, ns, _ in repeated)
            raise SpecError(
                f"duplicate {self.source.key!r}: {shown}",
                field=f"{self.where}.key",
                hint="keys must be unique: they identify a row across runs",
            )

    def batches(self, size: int = BATCH_ROWS) -> Iterator[list[DatasetRow]]:
        """The rows in file order, ``size`` at a time."""
        key = self.source.key
        reader = self.rel.to_arrow_reader(size)
        for batch in reader:
            yield [
                DatasetRow(_key_text(r[key]), {c: jsonable(v) for c, v in r.items()})
                for r in batch.to_pylist()
            ]

    def close(self) -> None:
        """Release the DuckDB connection."""
        self.con.close()

    def __enter__(self) -> DatasetRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dataset(source: ItemsSource, where: str = "items_from") -> DatasetRows:
    """Open ``source`` (raising :class:`SpecError` if it cannot be read or lacks its key)."""
    return DatasetRows(source, where)


def _key_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(jsonable(value))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _rows(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers[:_SHOWN])
