"""Every live call streams: a slow healthy answer is kept, a hung or stalled one is cut.

Timeouts are small here (fractions of a second); the real defaults (30 s first byte, 60 s idle)
and the 40 s answer are in bench/.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import fan_out_spec
from sqlalchemy import select

import nyxnb
from nyxnb import events as ev
from nyxnb.errors import PartialUsage, ProviderError
from nyxnb.providers import streaming
from nyxnb.providers.base import CompletionRequest, ProviderOptions
from nyxnb.providers.registry import create_provider
from nyxnb.store.models import LlmCall, StepItem, WorkflowStep
from nyxnb.store.seed import seed
from nyxnb.testing import hang, reply

PROVIDERS = ["anthropic", "openai", "google"]
FAST = nyxnb.RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.02)
LONG = " ".join(f"word{i}" for i in range(40))  # ten chunks of four words


@pytest.fixture
def fake(fake_server):
    return fake_server


@pytest.fixture
def seeded(sqlite_store):
    seed(sqlite_store)
    return sqlite_store


def complete(provider: str, **options: object):
    async def go():
        prov = create_provider(provider, options or None)
        try:
            return await prov.complete(CompletionRequest.of("sys", "hello there"))
        finally:
            await prov.aclose()

    return asyncio.run(go())


def spec(n: int, chain: tuple[str, ...], **defaults: object) -> dict:
    return fan_out_spec("streams", n, chain, **defaults)


def run(store, fake_spec: dict) -> nyxnb.RunResult:
    return nyxnb.run(fake_spec, tenant="nyx", project="BRbase", store=store, retry=FAST)


def rows(store, workflow_id: str) -> list[StepItem]:
    with store.session() as s:
        query = select(StepItem).join(WorkflowStep).where(WorkflowStep.workflow_id == workflow_id)
        return list(s.scalars(query.order_by(StepItem.idx)).all())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_healthy_answer_longer_than_the_first_byte_timeout_is_kept(fake, provider):
    # 10 chunks 0.15 s apart: 1.4 s in all, three times the first-byte timeout, never idle 1 s
    fake.script(provider, reply(LONG, output_tokens=40, chunk_delay_ms=150))
    answer = complete(provider, timeout_s=0.5, idle_s=1.0)
    assert answer.text == LONG and answer.output_tokens == 40
    assert fake.hits[provider] == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stalled_answer_is_cut_by_the_idle_timeout_and_is_not_hung(fake, provider):
    fake.script(provider, reply(LONG, stall_s=3))
    with pytest.raises(ProviderError) as caught:
        complete(provider, timeout_s=2.0, idle_s=0.3)
    assert caught.value.kind == "timeout" and not caught.value.hung
    assert "may be billed" in caught.value.message


# what each stream counted before the cut: Anthropic's message_start and every Gemini chunk carry
# the input count, OpenAI counts only in its last chunk; no provider counts output mid-answer
INPUT_COUNTED = {"anthropic": 30, "openai": None, "google": 30}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_cut_call_carries_the_providers_counts_and_estimates_only_the_rest(fake, provider):
    fake.script(provider, reply(LONG, input_tokens=30, output_tokens=40, stall_s=3))
    with pytest.raises(ProviderError) as caught:
        complete(provider, timeout_s=2.0, idle_s=0.3)
    partial = caught.value.partial
    assert partial is not None and partial.input_tokens == INPUT_COUNTED[provider]
    assert not partial.output_counted and partial.output_tokens < 40  # what came before the stall
    assert partial.describe() in caught.value.message  # the ledger row's error says it


def test_a_cut_calls_ledger_row_carries_its_tokens_and_cost(seeded, fake):
    """A cut call is billed by the provider: its ledger row said 0 tokens and $0."""
    fake.script("anthropic", reply(LONG, input_tokens=30, output_tokens=40, stall_s=3))
    options = {"anthropic": {"timeout_s": 2.0, "idle_s": 0.3}}
    result = nyxnb.run(
        spec(1, ("anthropic", "openai")),
        tenant="nyx",
        project="BRbase",
        store=seeded,
        retry=FAST,
        provider_options=options,
    )
    assert result.ok, result.error
    with seeded.session() as s:
        cut = s.scalars(select(LlmCall).where(LlmCall.provider == "anthropic")).one()
    assert cut.error_kind == "timeout"
    assert cut.input_tokens == 30  # Anthropic's message_start counted it before the cut
    assert cut.output_tokens < 40  # what came before the stall (estimated), if anything
    assert cut.cost_usd > 0


def test_a_cut_after_the_last_count_keeps_the_providers_output_count() -> None:
    watch = streaming.Watch("anthropic", "m", 1.0, 1.0)
    watch.chars = 400  # ~100 tokens by the estimate
    assert watch.partial() == PartialUsage(None, 100, False)
    watch.counted = lambda: (30, 57)  # e.g. Anthropic's message_delta came, then silence
    assert watch.partial() == PartialUsage(30, 57, True)
    assert watch.partial().describe() == "30 input + 57 output tokens"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_silent_provider_is_hung_after_the_first_byte_timeout(fake, provider):
    fake.script(provider, hang(5))
    with pytest.raises(ProviderError) as caught:
        complete(provider, timeout_s=0.3, idle_s=10)
    assert caught.value.kind == "timeout" and caught.value.hung


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_usage_matches_the_whole_answer(fake, provider):
    fake.script(
        provider, reply("a b c d e f g", input_tokens=30, output_tokens=7, cached_tokens=10)
    )
    fake.script(provider, reply("thinking done", output_tokens=2, reasoning_tokens=50))
    plain, thought = complete(provider), complete(provider)
    assert (plain.text, plain.input_tokens, plain.output_tokens) == ("a b c d e f g", 30, 7)
    assert plain.cached_input_tokens == 10
    assert thought.text == "thinking done"  # the thinking is never part of the text
    assert thought.output_tokens == 52  # thinking is billed as output
    if provider != "anthropic":  # Anthropic does not count thinking apart
        assert thought.reasoning_tokens == 50


def test_reasoning_models_wait_longer_for_the_first_byte():
    opts = ProviderOptions()
    assert opts.first_byte_s("gpt-4o-mini") == 30.0
    assert opts.first_byte_s("o3-mini") == streaming.REASONING_FIRST_BYTE_S
    assert opts.first_byte_s("gpt-4o-mini", reasoning=True) == streaming.REASONING_FIRST_BYTE_S
    assert ProviderOptions(timeout_s=5).first_byte_s("o3-mini") == 5.0  # said: kept


def test_one_hung_call_moves_every_waiting_item_on(seeded, fake):
    fake.set_default("anthropic", hang(60))
    result = run(seeded, spec(5, ("anthropic", "openai"), timeouts={"anthropic": 0.4}))
    assert result.ok, result.error
    assert {r.provider for r in rows(seeded, result.workflow_id)} == {"openai"}
    assert fake.hits["anthropic"] == 1  # five items, one 0.4 s wait, not five in a row
    with seeded.session() as s:
        cut = s.scalars(select(LlmCall).where(LlmCall.provider == "anthropic")).all()
    assert [c.error_kind for c in cut] == ["timeout"]  # in the ledger, possibly billed


def test_streaming_progress_and_a_silent_provider_are_shown(seeded, fake, monkeypatch):
    monkeypatch.setattr(streaming, "SILENT_NOTICE_S", 0.1)
    fake.script("anthropic", hang(0.5, then=reply(LONG, chunk_delay_ms=150)))
    fake.set_default("anthropic", reply(LONG, chunk_delay_ms=150))
    result = run(seeded, spec(1, ("anthropic",)))
    assert result.ok, result.error
    shown = [e for e in result.events if isinstance(e, ev.Generating)]
    silent = [e for e in shown if e.waiting_s is not None]
    writing = [e for e in shown if e.waiting_s is None]
    assert silent and "anthropic has sent nothing for" in silent[0].summary
    assert writing and writing[-1].tokens > 0 and writing[-1].tokens_per_s > 0
    assert "anthropic writing" in writing[-1].summary
