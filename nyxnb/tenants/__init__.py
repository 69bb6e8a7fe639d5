"""Clone a workflow; move a project between tenants (plan, apply, verify, reverse).

May import ``nyxnb.store`` and the ground modules only: migrations never run the engine.
"""
