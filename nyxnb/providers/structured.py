"""Structured outputs: each provider's native JSON-schema mode, validation, offline examples.

A step's ``output_schema`` travels on :class:`~nyxnb.providers.base.CompletionRequest`; the
request builders of the three SDK providers call one helper here each (live and batch alike):

- OpenAI Chat Completions: ``response_format = {type: json_schema, json_schema: {name, schema,
  strict: true}}`` (:func:`openai_params`);
- Anthropic Messages: ``output_config.format = {type: json_schema, schema}`` (structured outputs;
  the answer is one text block of JSON) (:func:`anthropic_params`);
- Gemini: ``response_mime_type = application/json`` and ``response_json_schema``
  (:func:`google_config` for the SDK, :func:`google_rest` for a batch file's REST line).

Every answer is validated with ``jsonschema`` (:func:`invalid_reason`) by the fallback chain: an
answer that does not parse or validate is a failed attempt (``error_kind = "invalid_output"``),
never stored or cached.  :func:`example_for` is the deterministic schema-valid value the
``offline`` provider (and the loopback fake) answers with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema

from nyxnb.errors import ErrorKind

#: The ``error_kind`` of an answer that is not valid JSON for the step's schema.
INVALID_OUTPUT = ErrorKind.INVALID_OUTPUT
SCHEMA_NAME = "output"

_WORDS = (
    "alpha bravo cedar delta ember fjord garnet harbor indigo juniper kestrel lumen meadow nectar "
    "orchid prairie quartz river summit tundra umber valley willow yarrow zephyr"
).split()


def schema_text(schema: Mapping[str, Any] | None) -> str:
    """A schema as canonical JSON text ('' for none): what request hashes and cache keys read."""
    return "" if schema is None else json.dumps(schema, sort_keys=True, separators=(",", ":"))


def openai_params(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Chat Completions parameters that ask for ``schema`` (strict), or none."""
    if schema is None:
        return {}
    spec = {"name": SCHEMA_NAME, "schema": dict(schema), "strict": True}
    return {"response_format": {"type": "json_schema", "json_schema": spec}}


def anthropic_params(params: dict[str, Any], schema: Mapping[str, Any] | None) -> None:
    """Add Anthropic's structured-output format to Messages parameters (kept beside ``effort``)."""
    if schema is not None:
        config = dict(params.get("output_config") or {})
        config["format"] = {"type": "json_schema", "schema": dict(schema)}
        params["output_config"] = config


def google_config(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """``GenerateContentConfig`` fields that ask Gemini for ``schema``, or none."""
    if schema is None:
        return {}
    return {"response_mime_type": "application/json", "response_json_schema": dict(schema)}


def google_rest(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """The same as :func:`google_config` in REST ``generationConfig`` spelling."""
    if schema is None:
        return {}
    return {"responseMimeType": "application/json", "responseJsonSchema": dict(schema)}


@lru_cache(maxsize=64)
def _validator(text: str) -> Any:
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def check_schema(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` is not a usable JSON Schema, or None."""
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


def parse_answer(text: str) -> Any:
    """The JSON value of an answer (a ```json fence around it is tolerated)."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    return json.loads(body)


def invalid_reason(text: str, schema: Mapping[str, Any]) -> str | None:
    """Why ``text`` is not a valid answer for ``schema`` (one line), or None when it is."""
    try:
        value = parse_answer(text)
    except ValueError as exc:
        return f"answer is not JSON: {exc}"[:500]
    error = jsonschema.exceptions.best_match(_validator(schema_text(schema)).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"answer does not match output_schema at {where}: {error.message}"[:500]


def normalised(text: str) -> str:
    """The stored form of a valid answer: compact JSON, keys in the order given."""
    return json.dumps(parse_answer(text), ensure_ascii=False)


def example_for(schema: Mapping[str, Any], seed: str) -> Any:
    """A deterministic value valid for ``schema`` (objects, arrays, enums, numbers, strings)."""
    return _example(dict(schema), hashlib.sha256(seed.encode()).digest(), 0, schema)


def _pick(digest: bytes, depth: int, n: int) -> int:
    return digest[depth % len(digest)] % max(n, 1)


def _example(schema: dict[str, Any], digest: bytes, depth: int, root: Mapping[str, Any]) -> Any:
    if "$ref" in schema:
        ref = str(schema["$ref"]).removeprefix("#/").split("/")
        target: Any = root
        for part in ref:
            target = target[part]
        return _example(dict(target), digest, depth, root)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _example(dict(schema[key][0]), digest, depth + 1, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        options = list(schema["enum"])
        return options[_pick(digest, depth, len(options))]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _BUILDERS.get(kind, _string)(schema, digest, depth, root)


def _object(schema: dict[str, Any], digest: bytes, depth: int, root: Any) -> Any:
    props = schema.get("properties") or {}
    return {
        name: _example(dict(sub), digest, depth + i + 1, root)
        for i, (name, sub) in enumerate(props.items())
    }


def _array(schema: dict[str, Any], digest: bytes, depth: int, root: Any) -> Any:
    low = int(schema.get("minItems", 1))
    high = max(low, min(int(schema.get("maxItems", 3)), low + 2))
    n = low + _pick(digest, depth, high - low + 1)
    items = dict(schema.get("items") or {"type": "string"})
    return [_example(items, digest, depth + 7 * (i + 1), root) for i in range(n)]


def _integer(schema: dict[str, Any], digest: bytes, depth: int, root: Any) -> Any:
    low = int(schema.get("minimum", 0))
    high = int(schema.get("maximum", low + 100))
    return low + _pick(digest, depth, high - low + 1)


def _number(schema: dict[str, Any], digest: bytes, depth: int, root: Any) -> Any:
    low = float(schema.get("minimum", 0.0))
    high = float(schema.get("maximum", low + 1.0))
    return round(low + (high - low) * _pick(digest, depth, 101) / 100, 2)


def _string(schema: dict[str, Any], digest: bytes, depth: int, root: Any) -> Any:
    words = 1 + _pick(digest, depth + 3, 3)
    text = " ".join(_WORDS[_pick(digest, depth + j, len(_WORDS))] for j in range(words))
    low = int(schema.get("minLength", 0))
    text = text.ljust(low, "x")
    return text[: int(schema["maxLength"])] if "maxLength" in schema else text


_BUILDERS = {
    "object": _object,
    "array": _array,
    "integer": _integer,
    "number": _number,
    "string": _string,
    "boolean": lambda s, d, depth, r: bool(_pick(d, depth, 2)),
    "null": lambda s, d, depth, r: None,
}
