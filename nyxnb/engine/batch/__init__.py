"""Batch fan-out: submit pending items to a provider's batch API, poll it, ingest the results.

May import the engine's top modules, ``calls/``, ``durable/``, providers, store and ground.
"""
