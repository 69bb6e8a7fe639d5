"""The ``judge`` step: a persona grades an earlier step's output against a rubric.

The grade must carry a line ``SCORE: N`` (N within 0..scale); it is stored as the step's output
and ``workflow_steps.score``.  An answer without a valid score is a failed attempt
(``error_kind = "malformed"`` in ``llm_calls``), asked again up to :data:`GRADE_TRIES` times and
then the step fails: an unparseable grade never becomes a silent 0.
"""

from __future__ import annotations

import dataclasses
import re

from nyxnb import events as ev
from nyxnb.engine.context import RunContext, request_hash
from nyxnb.engine.durable import records
from nyxnb.engine.durable.rows import StepRow
from nyxnb.engine.outcomes import Attempt
from nyxnb.errors import ChainExhausted, ErrorKind, StepFailed
from nyxnb.store.models import RUNNING, utcnow
from nyxnb.templates import StepView

GRADE_TRIES = 3
DEFAULT_SCALE = 10
_SCORE = re.compile(
    r"^[\s*#_]*score[\s*_]*[:=][\s*_]*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", re.I | re.M
)

JUDGE_PROMPT = """\
Grade the output of the step "{target}" against the rubric, on a scale of 0 to {scale}.

Rubric:
{rubric}

Output of {target}:
{output}

Answer with one line "SCORE: <number from 0 to {scale}>", then a short justification."""


def parse_score(text: str, scale: int) -> float | None:
    """The score in a grade, or None when there is none or it lies outside 0..scale."""
    found = _SCORE.search(text or "")
    if found is None:
        return None
    value = float(found.group(1))
    if found.group(2) is not None and int(found.group(2)) != scale:
        return None  # graded on another scale: not comparable
    return value if 0 <= value <= scale else None


def _target_text(ctx: RunContext, step: StepRow) -> str:
    view = ctx.ctx.get(step.config.target or "")
    if view is None:
        raise StepFailed(
            f"judge target {step.config.target!r} has no output",
            workflow_id=ctx.workflow_id,
            step=step.name,
        )
    if view.items:
        return "\n\n".join(f"## {i.heading}\n{i.output}" for i in view.items)
    return view.output or ""


def judge_prompt(ctx: RunContext, step: StepRow) -> str:
    """The grading prompt: the step's own template if it has one, else :data:`JUDGE_PROMPT`."""
    target = step.config.target or ""
    base = JUDGE_PROMPT.format(
        target=target,
        scale=step.config.scale or DEFAULT_SCALE,
        rubric=step.config.rubric or "",
        output=_target_text(ctx, step),
    )
    return ctx.render(step) + "\n\n" + base if step.prompt else base


def _malformed(attempts: list[Attempt], text: str) -> list[Attempt]:
    message = f"grade without a valid SCORE line: {text[:120]!r}"
    return [
        dataclasses.replace(a, outcome="error", error_kind=ErrorKind.MALFORMED, error=message)
        if a.outcome in ("ok", "cached")
        else a
        for a in attempts
    ]


async def run_judge(ctx: RunContext, step: StepRow) -> None:
    """Grade the target step; store the grade and its numeric score."""
    scale = step.config.scale or DEFAULT_SCALE
    request = ctx.request(step, judge_prompt(ctx, step))
    digest = request_hash("judge", request)
    if ctx.skip_if_done(step, digest, StepView(step.name, step.output)):
        return
    records.update_step(ctx.store, step.id, status=RUNNING, error=None, started_at=utcnow())
    ctx.emit(ev.StepStarted(*ctx.at(step), persona=step.persona, provider=step.provider))
    for _ in range(GRADE_TRIES):
        ctx.check_pause()
        try:
            result = await ctx.call(step, request)
        except ChainExhausted as exc:
            raise ctx.fail(step, exc, exc.attempts) from None
        text = result.completion.text
        score = parse_score(text, scale)
        if score is None:
            attempts = _malformed(result.attempts, text)
            sent = ctx.take_sent(step)
            records.fail_step(ctx.store, step, "unparseable grade", attempts, sent_id=sent)
            continue
        records.complete_step(ctx.store, step, text, digest, result, ctx.take_sent(step))
        records.update_step(ctx.store, step.id, score=score)
        ctx.ctx[step.name] = StepView(step.name, text)
        ctx.emit(ev.StepCompleted(*ctx.at(step), provider=result.provider))
        return
    err = StepFailed(
        f"no valid score in {GRADE_TRIES} grades (expected a line 'SCORE: N', 0..{scale})",
        workflow_id=ctx.workflow_id,
        step=step.name,
    )
    raise ctx.fail(step, err)
