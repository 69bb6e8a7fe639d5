"""What survives a crash: the run's writes, typed rows, group commit, leases, the response cache.

May import ``nyxnb.engine.outcomes``, ``nyxnb.store`` and the ground modules; never
``engine/calls`` (storage does not know how an answer was obtained).
"""
