"""The read side: summaries of workflows and step-by-step comparisons of runs.

What the notebook and the CLI show. Reads the store only: may import ``nyxnb.store`` and the
ground modules, never the engine (a report never runs or changes a workflow).
"""
