"""One call's way to an answer: the fallback chain, retries, the rate governor, the shared budget.

May import ``nyxnb.engine.outcomes``, ``nyxnb.providers``, ``nyxnb.store`` and the ground modules;
never ``engine/durable`` (the chain does not know how its attempts are stored).
"""
