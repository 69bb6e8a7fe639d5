"""Run a notebook once per parameter set with papermill, keeping every executed notebook.

    results = run_batch("notebooks/01_run_workflow.ipynb", load_param_sets("runs.yaml"), "out/")

A parameter set file is YAML (a list of mappings, or ``{defaults: {...}, runs: [...]}``) or CSV
(a header of parameter names; cells are read as YAML scalars, an empty cell keeps the notebook's
default).  A failed run keeps its notebook, with papermill's error banner at the failing cell.

Secrets never travel as parameters: papermill writes parameters into the executed notebook (an
injected cell and its metadata).  :func:`check_parameters` refuses a parameter whose name or value
looks like a key, token, password or a URL with a password; keys come from the environment, which
each kernel inherits (``env=`` adds to it without writing anything to disk).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from nyxnb.errors import ConfigError
from nyxnb.store.database import Store
from nyxnb.store.models import Workflow, utcnow

Params = dict[str, Any]
_SECRET_WORDS = {
    "key",
    "keys",
    "apikey",
    "token",
    "secret",
    "secrets",
    "password",
    "passwd",
    "pwd",
    "credential",
    "credentials",
    "auth",
    "bearer",
}
SECRET_PATTERNS = [
    ("an API key (sk-...)", re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}")),
    ("a Google API key (AIza...)", re.compile(r"AIza[0-9A-Za-z_\-]{20,}")),
    (
        "an access token",
        re.compile(
            r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|"
            r"xox[abprs]-[\w-]{10,}|glpat-[\w-]{20,}|hf_[A-Za-z0-9]{20,})"
        ),
    ),
    ("an AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("a JSON web token", re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a URL with a password", re.compile(r"://[^/\s:@]+:[^/\s@]+@")),
]
_ENV_LOCK = threading.Lock()
_HINT = (
    "keys and passwords come from the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY, "
    "GEMINI_API_KEY, NYXNB_DB_URL / --db), never from parameters: papermill writes "
    "parameters into the executed notebook"
)


@dataclass(frozen=True)
class BatchResult:
    """One executed notebook: its parameters, status (``ok``/``failed``), time and error."""

    index: int
    parameters: Params
    output: Path
    status: str
    seconds: float
    error: str | None = None
    workflow_ids: tuple[str, ...] = ()  # workflows the run created (when the store is known)

    @property
    def ok(self) -> bool:
        """True when every cell ran."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "output": str(self.output)}


def _name_words(name: str) -> set[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w}


def _secret_env_values() -> set[str]:
    return {v for k, v in os.environ.items() if len(v) >= 8 and _name_words(k) & _SECRET_WORDS}


def _why_secret(value: Any, env_secrets: set[str]) -> str | None:
    if isinstance(value, Mapping):
        return next((w for v in value.values() if (w := _why_secret(v, env_secrets))), None)
    if isinstance(value, list | tuple):
        return next((w for v in value if (w := _why_secret(v, env_secrets))), None)
    if not isinstance(value, str):
        return None
    if any(secret in value for secret in env_secrets):
        return "the value of a key in the environment"
    return next((why for why, rx in SECRET_PATTERNS if rx.search(value)), None)


def check_parameters(params: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first parameter that looks like a secret."""
    env_secrets = _secret_env_values()
    for name, value in params.items():
        if _name_words(str(name)) & _SECRET_WORDS:
            raise ConfigError(f"parameter {name!r} is named like a secret", hint=_HINT)
        why = _why_secret(value, env_secrets)
        if why:  # never echo the value itself
            raise ConfigError(f"parameter {name!r} looks like a secret: {why}", hint=_HINT)


def _scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_param_sets(path: str | Path) -> list[Params]:
    """Parameter sets from a YAML/JSON or CSV file (see the module docstring)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"parameter file {file} not found")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".csv", ".tsv"):
        dialect = "excel-tab" if file.suffix.lower() == ".tsv" else "excel"
        rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
        sets = [
            {k.strip(): _scalar(v) for k, v in row.items() if k and v not in (None, "")}
            for row in rows
        ]
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"parameter file {file} is not valid YAML: {_yaml_problem(exc)}",
                hint="fix that line; the file is a list of mappings, e.g. - {provider: offline}",
            ) from None
        sets = _sets_from(data, file)
    if not sets:
        raise ConfigError(f"parameter file {file} holds no parameter sets")
    return sets


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what is wrong, and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def unknown_parameters(notebook: Path, params: Mapping[str, Any]) -> str | None:
    """Why ``params`` do not fit the notebook's ``parameters`` cell (a misspelling), or None."""
    import papermill

    known = set(papermill.inspect_notebook(str(notebook)))
    unknown = [k for k in params if k not in known]
    if not known or not unknown:
        return None
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown parameter {', '.join(parts)}: {notebook.name} takes {', '.join(sorted(known))}"


def _sets_from(data: Any, file: Path) -> list[Params]:
    defaults: Params = {}
    if isinstance(data, Mapping) and ("runs" in data or "defaults" in data):
        defaults = dict(data.get("defaults") or {})
        data = data.get("runs") or [{}]
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(x, Mapping) for x in data):
        raise ConfigError(
            f"parameter file {file}: expected a list of mappings",
            hint="e.g. - {provider: offline, project: BRbase}",
        )
    return [{**defaults, **dict(x)} for x in data]


@contextlib.contextmanager
def _environ(extra: Mapping[str, str] | None) -> Iterator[None]:
    """Kernels inherit os.environ: add ``extra`` for the batch only, then restore."""
    if not extra:
        yield
        return
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in extra}
        os.environ.update(extra)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _error_text(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        cell = getattr(exc, "exec_count", None)
        first = str(evalue or "").strip().splitlines()
        return f"{ename}: {first[0] if first else ''}" + (f" (cell [{cell}])" if cell else "")
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


def _writable_folder(target: Path) -> Path:
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / ".nyxnb-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write the executed notebooks to {target}: {exc.strerror or exc}",
            hint="pass --out a folder you can write to",
        ) from None
    return target


def _workflows_since(store: Store | None, since: datetime) -> tuple[str, ...]:
    if store is None:
        return ()
    query = select(Workflow.id).where(Workflow.created_at >= since)
    with store.reading() as conn:
        return tuple(str(x) for x in conn.scalars(query.order_by(Workflow.created_at)))


def run_batch(
    notebook: str | Path,
    param_sets: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    kernel_name: str | None = None,
    cwd: str | Path | None = None,
    cell_timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    on_start: Callable[[int, int, Params], None] | None = None,
    on_result: Callable[[BatchResult], None] | None = None,
    store: Store | None = None,
) -> list[BatchResult]:
    """Execute ``notebook`` once per parameter set into ``out_dir``; never raises on a failed run.

    Args:
        notebook: the ``.ipynb`` to run; it needs a cell tagged ``parameters``.
        param_sets: one mapping per run; all are checked (:func:`check_parameters`) first.
        out_dir: where ``<stem>-001.ipynb``, ``<stem>-002.ipynb``, ... are written.
        kernel_name: the kernel (default: the notebook's).
        cwd: the kernels' working directory (default: the notebook's folder).
        cell_timeout: seconds a cell may run (default: no limit).
        env: extra environment for the kernels, e.g. ``{"NYXNB_DB_URL": url}``.
        on_start, on_result: progress callbacks, before and after each run.
        store: the kernels' store, to name the workflows each run created.

    A parameter the notebook's ``parameters`` cell does not define (a misspelling) fails
    that run before it starts: papermill would only warn and run with the default.

    Returns:
        One :class:`BatchResult` per parameter set, in order.
    """
    source = Path(notebook)
    if not source.is_file():
        raise ConfigError(f"notebook {source} not found")
    sets = [dict(p) for p in param_sets]
    for params in sets:
        check_parameters(params)
    target = _writable_folder(Path(out_dir))
    results: list[BatchResult] = []
    papermill_options = {
        "kernel_name": kernel_name,
        "cwd": str(cwd or source.resolve().parent),
        "progress_bar": False,
        "log_output": False,
        "execution_timeout": cell_timeout,
    }
    with _environ(env):
        for i, params in enumerate(sets, start=1):
            if on_start is not None:
                on_start(i, len(sets), params)
            output = target / f"{source.stem}-{i:03d}.ipynb"
            result = _run_one(source, output, i, params, papermill_options, store)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _run_one(
    source: Path,
    output: Path,
    index: int,
    params: Params,
    papermill_options: Mapping[str, Any],
    store: Store | None,
) -> BatchResult:
    """Execute one parameter set into ``output``; a failure is recorded, never raised."""
    import papermill

    started, since = time.perf_counter(), utcnow()
    error = unknown_parameters(source, params)
    try:
        if error is None:
            papermill.execute_notebook(
                str(source), str(output), parameters=params, **papermill_options
            )
    except Exception as exc:  # noqa: BLE001 - recorded in the result, the batch goes on
        error = _error_text(exc)
    return BatchResult(
        index,
        params,
        output,
        "failed" if error else "ok",
        round(time.perf_counter() - started, 2),
        error,
        _workflows_since(store, since),
    )
