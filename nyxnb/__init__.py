"""nyxnb: durable, multi-step LLM workflows for Jupyter.

import nyxnb
store = nyxnb.open_store()                       # data/nyxnb.db of the project
result = nyxnb.run("data/workflows/brbase-plan.yaml", tenant="nyx", project="BRbase",
                   provider="offline")
nyxnb.resume(result.workflow_id)                 # after a crash, pause or failure
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from nyxnb.errors import (
    AlreadyExists,
    AnswerRejected,
    BudgetExceeded,
    ChainExhausted,
    ClaimLost,
    ConfigError,
    CrossTenantWrite,
    LeaseHeld,
    LeaseLost,
    MigrationConflict,
    MigrationError,
    MissingExtra,
    MissingKey,
    NotFound,
    NyxError,
    ProviderError,
    ProviderRefused,
    ProviderUnavailable,
    RunError,
    SpecError,
    StalePlan,
    StepFailed,
    StoreError,
    StoreUnavailable,
    StoreVersionError,
    UnknownEndpoint,
    UnknownProvider,
    VerificationFailed,
    WorkflowStopped,
)

if TYPE_CHECKING:
    from nyxnb.engine.api import (
        RunResult,
        aresume,
        arun,
        cancel_batches,
        pause,
        resume,
        resume_iter,
        run,
        run_iter,
        submit,
    )
    from nyxnb.engine.calls.chain import RetryPolicy
    from nyxnb.engine.iterate.revisions import rerun
    from nyxnb.engine.telemetry import enable_tracing
    from nyxnb.engine.workflows import RunOptions, create_workflow
    from nyxnb.reports.compare import compare
    from nyxnb.spec import WorkflowSpec, load_spec
    from nyxnb.store import Store, open_store
    from nyxnb.tenants.clone import clone_workflow
    from nyxnb.tenants.migrate import (
        MigrationPlan,
        apply_migration,
        plan_migration,
        reverse_migration,
    )

# Heavy modules (SQLAlchemy, pydantic, Jinja2) load on first use, so `import nyxnb` stays fast.
_LAZY = {
    "RunResult": "engine.api",
    "aresume": "engine.api",
    "arun": "engine.api",
    "cancel_batches": "engine.api",
    "pause": "engine.api",
    "resume": "engine.api",
    "resume_iter": "engine.api",
    "run": "engine.api",
    "run_iter": "engine.api",
    "submit": "engine.api",
    "enable_tracing": "engine.telemetry",
    "RetryPolicy": "engine.calls.chain",
    "compare": "reports.compare",
    "rerun": "engine.iterate.revisions",
    "clone_workflow": "tenants.clone",
    "MigrationPlan": "tenants.migrate",
    "apply_migration": "tenants.migrate",
    "plan_migration": "tenants.migrate",
    "reverse_migration": "tenants.migrate",
    "WorkflowSpec": "spec",
    "load_spec": "spec",
    "Store": "store",
    "open_store": "store",
    "RunOptions": "engine.workflows",
    "create_workflow": "engine.workflows",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nyxnb' has no attribute {name!r}")
    value = getattr(import_module(f"nyxnb.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AnswerRejected",
    "BudgetExceeded",
    "ChainExhausted",
    "ClaimLost",
    "ConfigError",
    "CrossTenantWrite",
    "LeaseHeld",
    "LeaseLost",
    "MigrationConflict",
    "MigrationError",
    "MigrationPlan",
    "MissingExtra",
    "MissingKey",
    "NotFound",
    "NyxError",
    "ProviderError",
    "ProviderRefused",
    "ProviderUnavailable",
    "RetryPolicy",
    "RunError",
    "RunOptions",
    "RunResult",
    "SpecError",
    "StalePlan",
    "StepFailed",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoreVersionError",
    "UnknownEndpoint",
    "UnknownProvider",
    "VerificationFailed",
    "WorkflowSpec",
    "WorkflowStopped",
    "__version__",
    "apply_migration",
    "aresume",
    "arun",
    "cancel_batches",
    "clone_workflow",
    "compare",
    "create_workflow",
    "enable_tracing",
    "load_spec",
    "open_store",
    "pause",
    "plan_migration",
    "rerun",
    "resume",
    "resume_iter",
    "reverse_migration",
    "run",
    "run_iter",
    "submit",
]
