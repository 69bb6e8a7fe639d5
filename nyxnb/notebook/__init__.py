"""What a notebook shows: widgets, text progress, DuckDB inspection, papermill batches.

May import ``nyxnb.engine``, ``nyxnb.tenants``, ``nyxnb.providers``, ``nyxnb.store`` and the
ground modules; never ``nyxnb.cli``.
"""
