"""nyxnb: durable, multi-step LLM workflows for Jupyter.

import nyxnb
store = nyxnb.open_store()                       # data/nyxnb.db of the project
result = nyxnb.run("data/workflows/brbase-plan.yaml", tenant="nyx", project="BRbase",
                   provider="offline")
nyxnb.resume(result.workflow_id)                 # after a crash, pause or failure
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AlreadyExists,
    AnswerRejected,
    BudgetExceeded,
    ChainExhausted,
    ConfigError,
    LeaseHeld,
    MigrationConflict,
    MigrationError,
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
    UnknownProvider,
    VerificationFailed,
)

if TYPE_CHECKING:
    from .api import RunResult, aresume, arun, pause, resume, resume_iter, run, run_iter
    from .chain import RetryPolicy
    from .clone import clone_workflow
    from .migrate import MigrationPlan, apply_migration, plan_migration, reverse_migration
    from .spec import WorkflowSpec, load_spec
    from .store import Store, open_store
    from .workflows import RunOptions, create_workflow

# Heavy modules (SQLAlchemy, pydantic, Jinja2) load on first use, so `import nyxnb` stays fast.
_LAZY = {
    "RunResult": "api",
    "aresume": "api",
    "arun": "api",
    "pause": "api",
    "resume": "api",
    "resume_iter": "api",
    "run": "api",
    "run_iter": "api",
    "RetryPolicy": "chain",
    "clone_workflow": "clone",
    "MigrationPlan": "migrate",
    "apply_migration": "migrate",
    "plan_migration": "migrate",
    "reverse_migration": "migrate",
    "WorkflowSpec": "spec",
    "load_spec": "spec",
    "Store": "store",
    "open_store": "store",
    "RunOptions": "workflows",
    "create_workflow": "workflows",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nyxnb' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
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
    "ConfigError",
    "LeaseHeld",
    "MigrationConflict",
    "MigrationError",
    "MigrationPlan",
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
    "UnknownProvider",
    "VerificationFailed",
    "WorkflowSpec",
    "__version__",
    "apply_migration",
    "aresume",
    "arun",
    "clone_workflow",
    "create_workflow",
    "load_spec",
    "open_store",
    "pause",
    "plan_migration",
    "resume",
    "resume_iter",
    "reverse_migration",
    "run",
    "run_iter",
]
