"""Cost from the ledger: live vs batch vs live+cache vs batch+cache, in one run.

Workloads: the 13-item sample workflow (``data/workflows/brbase-plan.yaml``, every step) and a
1,000-item fan-out whose items share a 2,000-token context.  Every call goes through the real
``anthropic`` (or ``openai``, or ``google-genai``) SDK to the loopback fake
(``nyxnb.testing.batches``: Message Batches, OpenAI Files + Batches and Gemini batch mode,
prompt-cache accounting, 1 token per word, prefixes under 1,024 tokens not cached), and the
figures are the sums of ``llm_calls`` (tokens and USD at genai-prices' claude-haiku-4-5,
gpt-4o-mini or gemini-2.5-flash rates).  OpenAI and Gemini cache by themselves, so their modes
are live and batch.

    .venv/bin/python -m bench.cost [--items 1000] [--provider anthropic|openai|google]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

import nyxnb
from nyxnb.spec import load_spec
from nyxnb.store.models import LlmCall
from nyxnb.store.seed import seed
from nyxnb.testing.batches import FakeBatchServer

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "workflows" / "brbase-plan.yaml"
SHARED = " ".join(f"context{i % 97}" for i in range(2000))
MODES = {"live": (False, False), "batch": (True, False), "live+cache": (False, True),
         "batch+cache": (True, True)}  # fmt: skip
#: OpenAI's prompt caching is automatic: it cannot be turned off.
AUTO_CACHE_MODES = {"live (auto cache)": (False, True), "batch (auto cache)": (True, True)}
POLL = {"initial_s": 0.05, "max_s": 0.2}


def _fan_out(n: int, provider: str) -> dict[str, Any]:
    return {
        "name": f"fanout-{n}",
        "defaults": {"provider": provider, "fallback": [], "concurrency": 16},
        "steps": [
            {
                "name": "features",
                "type": "fan-out",
                "persona": "Cael",
                "items": [{"heading": f"Feature {i}"} for i in range(n)],
                "prompt": SHARED + "\n\nDesign {{ item.heading }}",
            }
        ],
    }


def _sample(provider: str) -> dict[str, Any]:
    spec = load_spec(SAMPLE).to_dict()
    spec["defaults"] |= {"provider": provider, "fallback": []}
    return spec


def _ledger(store: nyxnb.Store, workflow_id: str) -> dict[str, float]:
    c = LlmCall
    query = select(
        func.count(),
        func.sum(c.input_tokens),
        func.sum(c.cached_input_tokens),
        func.sum(c.cache_write_tokens),
        func.sum(c.output_tokens),
        func.sum(c.cost_usd),
    ).where(c.workflow_id == workflow_id)
    with store.reading() as conn:
        calls, inp, read, write, out, usd = conn.execute(query).one()
    return {"calls": calls, "input": inp, "cache_read": read, "cache_write": write,
            "output": out, "usd": usd}  # fmt: skip


def measure(spec: dict[str, Any], store: nyxnb.Store, batch: bool, cache: bool) -> dict:
    """Run ``spec`` once in a mode against a fresh fake; its ledger totals."""
    spec = {**spec, "defaults": {**spec["defaults"], "cache": False, "batch_poll": POLL}}
    with FakeBatchServer(live_caching=True) as srv:
        os.environ.update(srv.env())
        result = nyxnb.run(
            spec,
            tenant="nyx",
            project="BRbase",
            store=store,
            batch=batch,
            provider_options={"anthropic": {"prompt_cache": cache}},
        )
    if not result.ok:
        raise SystemExit(f"{spec['name']} failed: {result.error}")
    return _ledger(store, result.workflow_id)


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    providers = ["anthropic", "openai", "google"]
    parser.add_argument("--provider", choices=providers, default="anthropic")
    parser.add_argument("--model", default=None, help="default: the provider's default model")
    args = parser.parse_args(argv)
    modes = MODES if args.provider == "anthropic" else AUTO_CACHE_MODES
    lines = ["| workload | mode | calls | input tok | cache read | cache write | output tok "
             "| USD | vs live |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        store = nyxnb.open_store(f"sqlite:///{tmp}/cost.db")
        seed(store)
        workloads = (("sample (13 items)", _sample(args.provider)),
                     (f"fan-out {args.items}", _fan_out(args.items, args.provider)))  # fmt: skip
        for name, spec in workloads:
            spec["defaults"]["model"] = args.model
            live = None
            for mode, (batch, cache) in modes.items():
                row = measure(spec, store, batch, cache)
                live = live or row["usd"]
                lines.append(
                    f"| {name} | {mode} | {row['calls']} | {row['input']:,} | "
                    f"{row['cache_read']:,} | {row['cache_write']:,} | {row['output']:,} | "
                    f"${row['usd']:.4f} | {row['usd'] / live:.3f}x |"
                )
                print(lines[-1], flush=True)
        store.engine.dispose()
    return lines


if __name__ == "__main__":
    main()
