"""``offline``: a deterministic local provider so demos, notebooks and tests need no key.

Answers are derived from a hash of the request and clearly labelled ``[offline]``; they are not
model output.  ``latency_ms`` simulates provider latency; token counts are word counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re

from nyxnb.providers import structured
from nyxnb.providers.base import STOP_END, Completion, CompletionRequest, Provider, ProviderOptions

_WORDS = (
    "boundary contract module router schema test fixture migration tenant cache latency "
    "invariant handler persona review rollback index query feature folder import auth"
).split()


_GRADE = re.compile(r"SCORE: <number from 0 to (\d+)>")


class OfflineOptions(ProviderOptions):
    """``latency_ms`` defaults to ``NYXNB_OFFLINE_LATENCY_MS`` (0 when unset)."""

    latency_ms: float = float(os.environ.get("NYXNB_OFFLINE_LATENCY_MS", "0") or 0)
    words: int = 40


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:120]


def offline_answer(system: str, prompt: str, words: int) -> str:
    """The deterministic offline answer for a system prompt and user prompt."""
    digest = hashlib.sha256(f"{system}\x00{prompt}".encode()).digest()
    body = " ".join(_WORDS[b % len(_WORDS)] for b in digest[: max(1, min(words, 32))])
    persona = _first_line(system).split(".")[0][:60] or "assistant"
    answer = f"[offline] {persona} on: {_first_line(prompt)}\n\n{body}."
    asked = _GRADE.search(prompt)  # a judge step: a deterministic grade in the asked format
    if asked:
        answer = f"SCORE: {digest[0] % (int(asked.group(1)) + 1)}\n{answer}"
    return answer


class OfflineProvider(Provider):
    """Deterministic local answers; no network, no key."""

    name = "offline"
    key_env = ()
    default_model = "offline-1"
    Options = OfflineOptions
    probe_first = False  # no account, no credit: nothing to probe

    async def complete(self, request: CompletionRequest) -> Completion:
        """Answer from a hash of the request, after the simulated latency."""
        opts: OfflineOptions = self.options  # type: ignore[assignment]
        if opts.latency_ms > 0:
            await asyncio.sleep(opts.latency_ms / 1000)
        prompt = "\n".join(m.content for m in request.messages)
        text = offline_answer(request.system, prompt, opts.words)
        if request.output_schema is not None:  # deterministic schema-valid JSON
            value = structured.example_for(request.output_schema, f"{request.system}\x00{prompt}")
            text = json.dumps(value)
        return Completion(
            text=text,
            stop_reason=STOP_END,
            input_tokens=len(request.system.split()) + len(prompt.split()),
            output_tokens=len(text.split()),
            model=self.model_for(request),
            provider=self.name,
        )
