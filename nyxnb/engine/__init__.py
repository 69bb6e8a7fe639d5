"""The engine: runner, fan-out, fallback chain, cache, leases, records, generated steps.

Executes workflows against a store and the providers. May import ``nyxnb.providers``,
``nyxnb.store`` and the ground modules; never ``cli``, ``notebook`` or ``tenants``.
(Named ``engine``, not ``run``: ``nyxnb.run`` is the public run function, and a sub-package
of that name would shadow it.)
"""
