"""The steps a spec asks the engine to generate after the user's steps, before they are rows.

Generated steps are ``auto_generated = true`` and ordered after every user step: one
``consistency-check`` (checks all outputs against each other) and one ``implementation-prompt``
per item of the designated fan-out step. The plan is pure spec work, so the seed (store) and the
runner (engine) share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nyxnb.spec import WorkflowSpec

CONSISTENCY_PROMPT = """\
Check the plan for {{ project.name }} for contradictions, gaps and duplicated work.
{% for s in steps %}
## {{ s.name }}
{% if s.items %}{% for i in s.items %}### {{ i.heading }}
{{ i.output }}
{% endfor %}{% else %}{{ s.output }}{% endif %}
{% endfor %}
List every inconsistency with the steps involved and a concrete fix; say "consistent" if none."""

IMPLEMENTATION_PROMPT = """\
Write a self-contained implementation prompt for a coding agent working on {{ project.name }}.
Feature: {{ item.heading }}
{{ item.body }}

Design notes:
{{ item.output }}

Include: files to create or change, the tests to write first, and acceptance criteria."""


@dataclass(frozen=True)
class GeneratedStep:
    """A step the engine generates: what it is, before it has an id and an order."""

    name: str
    type: str
    persona: str | None
    prompt: str
    config: dict[str, Any] = field(default_factory=dict)  # the stored JSON form

    def as_values(self) -> dict[str, Any]:
        """The step's columns (name, type, persona, prompt, config)."""
        return {
            "name": self.name,
            "type": self.type,
            "persona": self.persona,
            "prompt": self.prompt,
            "config": dict(self.config),
        }


def desired_generated(
    spec: WorkflowSpec, fanout_items: dict[str, list[tuple[int, str]]]
) -> list[GeneratedStep]:
    """The generated steps a workflow should have, given each fan-out's (index, heading) list."""
    out: list[GeneratedStep] = []
    check = spec.generate.consistency_check
    if check is not None:
        prompt = check.prompt or CONSISTENCY_PROMPT
        out.append(GeneratedStep("consistency_check", "consistency-check", check.persona, prompt))
    impl = spec.generate.implementation_prompts
    if impl is not None:
        for idx, heading in fanout_items.get(impl.from_, []):
            config = {"from": impl.from_, "item_idx": idx, "heading": heading}
            out.append(
                GeneratedStep(
                    f"implement_{idx + 1:02d}",
                    "implementation-prompt",
                    impl.persona,
                    impl.prompt or IMPLEMENTATION_PROMPT,
                    config,
                )
            )
    return out
