"""One error hierarchy for nyxnb.  Every error says what to do about it.

    NyxError                      root: catch this to catch everything nyxnb raises
    ├── ConfigError               bad configuration or input from the user
    │   ├── MissingKey            a provider's API key is not in the environment
    │   ├── MissingExtra          an endpoint needs an optional SDK extra that is not installed
    │   └── UnknownProvider       a provider name nobody registered
    │       └── UnknownEndpoint   an ``endpoint:model`` naming no endpoint
    ├── StoreError                the store cannot do what was asked
    │   ├── StoreUnavailable      cannot connect / malformed URL
    │   ├── StoreVersionError     the store was written by a newer nyxnb
    │   ├── NotFound              no such row (or it belongs to another tenant)
    │   │   └── CrossTenantWrite  a row attached to another tenant's parent: refused
    │   └── AlreadyExists         a unique name/slug is taken
    ├── SpecError                 a workflow spec is invalid (names the field and line)
    ├── RunError                  a workflow run cannot proceed
    │   ├── LeaseHeld             another process is running this workflow
    │   ├── LeaseLost             this run's lease was taken over; its writes are refused
    │   ├── ClaimLost             a fan-out item's claim expired; its write was refused
    │   ├── StepFailed            a step failed (workflow id, step, item)
    │   ├── WorkflowStopped       an awaited notebook run paused or failed: one line, Run All stops
    │   └── BudgetExceeded        the next fan-out would exceed max_cost_usd
    ├── ProviderError             one provider call failed; ``kind`` says why
    │   ├── ProviderUnavailable   transient: retry, then try elsewhere
    │   ├── ProviderRefused       exhausted/auth/not_found/bad request: stop using it
    │   ├── AnswerRejected        truncated or refused answer: never stored as completed
    │   └── ChainExhausted        every provider of the chain failed (lists each reason)
    └── MigrationError            clone/migration planning or applying failed
        ├── MigrationConflict     target rows conflict and no policy resolves them
        ├── StalePlan             the database changed since the plan was made
        └── VerificationFailed    post-apply checks failed; everything was rolled back

Pause is not an error: a paused run ends with a ``workflow_paused`` event. In a notebook it is
an outcome that must stop *Run All* (the next cells read a finished run), so ``await
WorkflowProgress.arun(...)`` raises :class:`WorkflowStopped`, which IPython shows as its one line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nyxnb.rates import RateInfo

# scheme://user:PASSWORD@host -- the password part of any URL-like text
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception as one redacted line: its class and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    label = type(exc).__name__
    return redact(f"{label}: {first}" if first else label)[:limit]


class ErrorKind(StrEnum):
    """Why a provider call failed (``ProviderError.kind``, ``llm_calls.error_kind``); the
    fallback chain decides on it (see the sets in :mod:`nyxnb.providers.base`)."""

    # refused: mark the provider down, move on
    EXHAUSTED = "exhausted"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    # transient: retry, then try elsewhere
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER = "server"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    # rejected: the answer is unusable, move on
    TRUNCATED = "truncated"
    REFUSED = "refused"
    EMPTY = "empty"
    INVALID_OUTPUT = "invalid_output"  # not JSON, or not valid for the step's output_schema
    # fatal: this request fails everywhere alike
    BAD_REQUEST = "bad_request"
    CONTEXT_TOO_LONG = "context_too_long"
    # a judge's grade without a valid SCORE line
    MALFORMED = "malformed"
    # a batch item that did not succeed, as the provider's batch API reports it
    ERRORED = "errored"
    EXPIRED = "expired"
    CANCELED = "canceled"


class NyxError(Exception):
    """Root of every error nyxnb raises; ``hint`` says how to fix it."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message = redact(message)  # a store URL's password never reaches a message
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = redact(hint)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(NyxError):
    """Bad configuration or input."""


class MissingKey(ConfigError):
    """A provider's API key is not set."""

    def __init__(self, provider: str, env_vars: Sequence[str]) -> None:
        self.provider = provider
        self.env_vars = tuple(env_vars)
        names = " or ".join(self.env_vars)
        super().__init__(
            f"provider {provider!r} needs an API key",
            hint=f"set {names} in the environment, or use --provider offline",
        )


class UnknownProvider(ConfigError):
    """A provider name that is not registered."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        super().__init__(
            f"unknown provider {name!r}", hint=f"choose one of: {', '.join(sorted(known))}"
        )


class UnknownEndpoint(UnknownProvider):
    """A chain entry naming neither a provider nor an endpoint of the spec or config files."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        ConfigError.__init__(
            self,
            f"unknown provider or endpoint {name!r}",
            hint=f"known: {', '.join(sorted(known))}; or declare it under `endpoints:` in the "
            "spec, the project's nyxnb.yaml or ~/.config/nyxnb/nyxnb.yaml",
        )


class MissingExtra(ConfigError):
    """An endpoint's API needs an optional package that is not installed."""

    def __init__(self, endpoint: str, package: str, extra: str) -> None:
        self.endpoint, self.package, self.extra = endpoint, package, extra
        super().__init__(
            f"endpoint {endpoint!r} needs {package}", hint=f"pip install 'nyxnb[{extra}]'"
        )


class StoreError(NyxError):
    """The store cannot do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or the URL is malformed."""


class StoreVersionError(StoreError):
    """The store's schema is newer than this nyxnb understands."""


class NotFound(StoreError):
    """No such row, or the row belongs to another tenant (indistinguishable on purpose)."""

    def __init__(self, kind: str, key: object, *, hint: str | None = None) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key!r} not found", hint=hint or f"check the {kind} id/name")


class CrossTenantWrite(NotFound):
    """A write that would attach a row to another tenant's parent row (refused; no row moves)."""

    def __init__(self, detail: str) -> None:
        NyxError.__init__(
            self,
            f"refused a write across tenants: {detail}",
            hint="attach rows to your own tenant's rows",
        )
        self.kind, self.key = "parent row", detail


class AlreadyExists(StoreError):
    """A unique name or slug is already taken."""


class SpecError(NyxError):
    """A workflow spec is invalid; ``field`` and ``line`` locate the problem."""

    def __init__(
        self, message: str, *, field: str = "", line: int | None = None, hint: str | None = None
    ) -> None:
        self.field = field
        self.line = line
        where = field or "spec"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{where}: {message}", hint=hint)


class RunError(NyxError):
    """A workflow run cannot proceed."""


class WorkflowStopped(RunError):
    """An awaited notebook run ended paused, interrupted or failed: an outcome, not a crash.

    Raised so *Run All* stops there (the next cells need a finished workflow). IPython, nbval
    and papermill show ``_render_traceback_``: the one line, without a traceback.
    """

    def __init__(self, workflow_id: str, status: str, line: str) -> None:
        self.workflow_id, self.status = workflow_id, status
        super().__init__(line)

    def _render_traceback_(self) -> list[str]:
        return [self.message]


class LeaseHeld(RunError):
    """Another process holds the run lease of this workflow."""

    def __init__(self, workflow_id: str, holder: str, seconds_left: float) -> None:
        self.workflow_id = workflow_id
        self.holder = holder
        super().__init__(
            f"workflow {workflow_id} is being run by {holder}",
            hint=f"wait for it to finish or pause it (`nyxnb pause {workflow_id}`); "
            f"a dead holder's lease expires in {max(seconds_left, 0):.0f}s",
        )


class LeaseLost(RunError):
    """This run's lease expired and another run took the workflow over; its writes are refused."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"workflow {workflow_id}: this run lost its lease to another run; "
            "its writes were refused",
            hint=f"`nyxnb show {workflow_id}` shows the state the other run left",
        )


class ClaimLost(RunError):
    """A write from an expired (or taken-over) item claim was refused: another worker owns it."""

    def __init__(self, step_id: str, idx: int, owner: str) -> None:
        self.step_id, self.idx, self.owner = step_id, idx, owner
        super().__init__(
            f"item {idx + 1} of step {step_id}: claim of {owner} expired; write refused",
            hint="another worker took the item over; nothing to do",
        )


class StepFailed(RunError):
    """A step (or one of its items) failed."""

    def __init__(
        self, message: str, *, workflow_id: str, step: str, item: int | None = None
    ) -> None:
        self.workflow_id = workflow_id
        self.step = step
        self.item = item
        where = f"step {step!r}" + (f" item {item}" if item is not None else "")
        super().__init__(
            f"{where} failed: {message}",
            hint=f"fix the cause, then `nyxnb resume {workflow_id}` (completed work is kept)",
        )


class BudgetExceeded(RunError):
    """Running the next step would exceed the workflow's ``max_cost_usd``."""


@dataclass(frozen=True)
class PartialUsage:
    """The tokens of a call cut mid-answer (providers bill it), as far as they are known.

    ``input_tokens`` None: the provider sent no count before the cut (OpenAI counts only in its
    last chunk).  ``output_counted`` False: ``output_tokens`` is estimated from the text that
    came (4 characters a token), since no provider counts output before its answer ends.
    """

    input_tokens: int | None
    output_tokens: int
    output_counted: bool

    def describe(self) -> str:
        """``30 input + ~12 output tokens`` (``~``: estimated)."""
        out = f"{'' if self.output_counted else '~'}{self.output_tokens} output tokens"
        return out if self.input_tokens is None else f"{self.input_tokens} input + {out}"


class ProviderError(NyxError):
    """One provider call failed; ``kind`` (an :class:`ErrorKind`) says why."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        kind: ErrorKind | str,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.provider = provider
        self.kind = ErrorKind(kind)
        self.retry_after = retry_after
        #: what the provider's rate-limit headers said, if it sent any
        self.rate: RateInfo | None = None
        #: a streamed call that got no byte at all within its first-byte timeout
        self.hung = False
        #: a streamed call cut mid-answer: the tokens it used, counted or estimated
        self.partial: PartialUsage | None = None
        super().__init__(f"{provider}: {kind}: {message}", hint=hint)


class ProviderUnavailable(ProviderError):
    """Transient failure (rate limit, overload, 5xx, timeout, connection): retry or go elsewhere."""


class ProviderRefused(ProviderError):
    """The provider refused the call (credit, auth, unknown model, bad request): stop using it."""


class AnswerRejected(ProviderError):
    """The answer was truncated or refused; it is never stored as completed."""


class ChainExhausted(ProviderError):
    """Every provider of a fallback chain failed; ``reasons`` lists each one."""

    def __init__(
        self, reasons: Sequence[tuple[str, str, str]], attempts: Sequence[object] = ()
    ) -> None:
        self.reasons = list(reasons)
        self.attempts: list[Any] = list(attempts)  # nyxnb.engine.outcomes.Attempt rows
        detail = "; ".join(f"{p}: {k} ({m})" for p, k, m in self.reasons)
        super().__init__(
            f"every provider failed: {detail}",
            provider="chain",
            kind=ErrorKind.EXHAUSTED,
            hint="check keys and credit, or add a provider to the step's fallback list",
        )


class MigrationError(NyxError):
    """A clone or tenant migration could not be planned or applied."""


class MigrationConflict(MigrationError):
    """Rows in the target tenant conflict and no policy resolves them."""


class StalePlan(MigrationError):
    """The database no longer matches the migration plan."""


class VerificationFailed(MigrationError):
    """Checks after applying failed; the transaction was rolled back."""
