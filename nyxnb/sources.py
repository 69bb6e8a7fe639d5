"""Files and data a spec points at: a fan-out's dataset source and a step's output schema.

Part of the ground vocabulary (imported by :mod:`nyxnb.spec`); imports only :mod:`nyxnb.errors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from nyxnb.errors import SpecError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


#: What a stored spec says in place of a dataset handed over from Python (never the rows).
PYTHON_DATA = "<python data>"


class ItemsSource(_Model):
    """A dataset as a fan-out's items: ``{path: FILE, key: COLUMN}`` or ``{sql: QUERY, key: ...}``.

    ``path`` is a CSV, JSON/JSONL or Parquet file (relative to the spec file); ``sql`` is DuckDB
    SQL over files (relative paths resolve against the spec's folder).  From Python, ``data``
    may be a pandas/polars DataFrame, an Arrow table or a list of dicts; it is never stored with
    the spec.  ``key`` names the column that identifies a row across runs; ``heading`` is a
    template over the row (default: the key).  Rows are copied into ``step_items`` when the
    workflow is created: a resume never reads the file again.
    """

    path: str | None = None
    sql: str | None = None
    data: Any = None  # stored as a placeholder: rows are never copied into the stored spec
    key: str = Field(min_length=1)
    heading: str | None = None
    base_dir: str | None = None  # set by the loader: the spec file's folder

    @field_serializer("data")
    def _no_rows(self, value: Any) -> str | None:
        return None if value is None else PYTHON_DATA

    @model_validator(mode="after")
    def _one_source(self) -> ItemsSource:
        given = [n for n in ("path", "sql", "data") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("items_from needs exactly one of `path`, `sql` (or `data` in Python)")
        return self


def schema_value(value: Any) -> Any:
    """A pydantic model class given as ``output_schema`` becomes its JSON Schema."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value.model_json_schema()
    return value


def load_schema(value: dict[str, Any] | str, base: Path, where: str) -> dict[str, Any]:
    """An ``output_schema``: inline, or read from a .json/.yaml file; checked by ``jsonschema``."""
    schema: Any = value
    if isinstance(value, str):
        path = base / value
        if not path.is_file():
            raise SpecError(f"output_schema file {str(path)!r} not found", field=where)
        schema = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(schema, dict):
        raise SpecError("output_schema must be a JSON Schema object", field=where)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SpecError(
            f"output_schema is not a valid JSON Schema: {exc.message}",
            field=where,
            hint="see https://json-schema.org/learn/getting-started-step-by-step",
        ) from None
    return schema


__all__ = ["PYTHON_DATA", "ItemsSource", "load_schema", "schema_value"]
