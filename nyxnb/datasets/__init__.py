"""Datasets read with DuckDB, in batches: a fan-out's rows in, a table of results out.

``reader.py`` opens a dataset (a CSV, JSON/JSONL or Parquet file, DuckDB SQL over files, a
DataFrame or a list of dicts), checks its key column and streams its rows in batches, so a
million-row file never sits in memory whole.  ``table.py`` writes rows out (CSV, JSONL,
Parquet) batch by batch.  May import only the ground modules (errors, sources, spec, templates).
"""

from nyxnb.datasets.reader import DatasetRows, open_dataset

__all__ = ["DatasetRows", "open_dataset"]
