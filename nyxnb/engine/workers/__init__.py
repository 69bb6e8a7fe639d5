"""Workers: the workflow queue, the worker loop, item claims for a shared fan-out.

May import the engine's top modules, ``calls/``, ``durable/``, providers, store and ground.
"""
