"""The deterministic ``pattern-check`` step: check generated code against a repository's rules.

Code is taken from fenced blocks of the target step's output (and its items).  A ``must_not``
rule is violated when its regex matches the code; a ``must`` rule when code is present and the
regex matches none of it.  No provider is called.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select

from nyxnb.errors import NotFound
from nyxnb.store.database import Database
from nyxnb.store.models import CodePattern, Repository

_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


@dataclass(frozen=True)
class Violation:
    """One broken rule."""

    name: str
    kind: str
    rule: str


@dataclass(frozen=True)
class CheckReport:
    """What a pattern check found."""

    repository: str
    rules: int
    code_blocks: int
    violations: tuple[Violation, ...]

    @property
    def score(self) -> float:
        """The share of rules kept, 0..1 (1.0 with no rules): the check as a score."""
        return 1.0 - len(self.violations) / self.rules if self.rules else 1.0

    def to_markdown(self) -> str:
        """The report stored as the step's output."""
        head = (
            f"# Pattern check: {self.repository}\n\n{self.rules} rules, "
            f"{self.code_blocks} code blocks, {len(self.violations)} violations.\n"
        )
        lines = [f"- **{v.name}** ({v.kind}): {v.rule}" for v in self.violations]
        return head + ("\n" + "\n".join(lines) + "\n" if lines else "\nNo violations.\n")


def load_patterns(store: Database, tenant_id: str, repository: str) -> list[CodePattern]:
    """The code patterns of ``OWNER/REPO`` in the tenant."""
    owner, _, repo = repository.partition("/")
    with store.session(tenant_id) as s:
        repo_row = s.scalar(
            select(Repository).where(Repository.owner == owner, Repository.repo == repo)
        )
        if repo_row is None:
            raise NotFound("repository", repository, hint="add it or fix `repository:` in the spec")
        return list(
            s.scalars(
                select(CodePattern)
                .where(CodePattern.repository_id == repo_row.id)
                .order_by(CodePattern.name)
            )
        )


def check_code(repository: str, patterns: list[CodePattern], texts: list[str]) -> CheckReport:
    """Check the fenced code in ``texts`` against ``patterns``."""
    blocks = [b for t in texts for b in _FENCE.findall(t or "")]
    code = "\n".join(blocks)
    violations = []
    for p in patterns:
        if not p.pattern:
            continue
        found = re.search(p.pattern, code, re.M) is not None
        if (p.kind == "must_not" and found) or (p.kind == "must" and blocks and not found):
            violations.append(Violation(p.name, p.kind, p.rule))
    return CheckReport(repository, len(patterns), len(blocks), tuple(violations))
