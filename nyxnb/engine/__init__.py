"""The engine: runs workflows against a store and the providers.

Where a behaviour lives (runner, context and fan-out at the top, where a reader looks first):

- the run loop, steps in order, resume and pause: ``runner.py``; the Python entry points
  (``run``/``resume``/``arun``, the sync facade that works inside Jupyter): ``api.py``
- the event loops nyxnb owns (timers that fire on time): ``loops.py``
- creating a workflow from a spec (tenant, project, personas, provider chains): ``workflows.py``
- what a step executor needs (prompts, requests, cache lookup, events): ``context.py``
- fan-out items, bounded concurrency, each item committed as it completes: ``fanout.py``; its
  requests, built from the prompts when used: ``requests.py``; a dataset copied into
  ``step_items`` when a workflow is created: ``materialise.py``
- generated steps' rows and items parsed from an output: ``generated.py``; pattern checks:
  ``patterncheck.py``; OpenTelemetry spans: ``telemetry.py``
- the values every room passes (an attempt, the chain's accepted answer): ``outcomes.py``
- ``calls/``: one call's way to an answer. The fallback chain and where a failed call is retried
  (``calls/chain.py``), where the rate limit is learned and waited for (``calls/governor.py``),
  the rate budget shared through the store (``calls/budget.py``)
- ``durable/``: what survives a crash. The one gateway to the database, every write fenced by
  the run's lease and retried over a reconnect (``durable/gateway.py``; no other module of the
  engine touches a raw engine), the writes of workflows, steps, the ledger and batches
  (``durable/records.py``), a fan-out's item rows: written, committed in groups (the hot path,
  one executemany per table), read back (``durable/items.py``), the typed rows read back
  (``durable/rows.py``), group commit (``durable/writer.py``), run leases and the fence
  (``durable/lease.py``), the response cache (``durable/cache.py``)
- ``batch/``: batch fan-out at half price: submit and ingest (``batch/submit.py``), polling a
  batch until it ends (``batch/poll.py``)
- ``workers/``: the queue (``workers/queue.py``), the worker loop (``workers/worker.py``), item
  claims that let several workers share one fan-out (``workers/claims.py``)
- ``iterate/``: revisions (``iterate/revisions.py``), variants (``iterate/variants.py``), the judge
  step (``iterate/judge.py``), the run digest (``iterate/digest.py``)

May import ``nyxnb.providers``, ``nyxnb.store`` and the ground modules; never ``cli``,
``notebook``, ``tenants`` or ``reports``. Inside, ``calls/`` and ``durable/`` import neither each
other nor the engine's top modules (only ``outcomes.py``). (Named ``engine``, not ``run``:
``nyxnb.run`` is the public run function, and a sub-package of that name would shadow it.)
"""
