"""Iterating on a workflow: revisions, variants, the judge step, the run digest.

May import the engine's top modules, ``calls/``, ``durable/``, providers, store and ground.
"""
