"""Where a project's files live: the project root that holds ``pyproject.toml`` and ``data/``.

Ground module: the store (``data/nyxnb.db``), prices (``data/pricing.yaml``) and sample data
all resolve their files from here, the same way from the repo root and from ``notebooks/``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest ancestor of ``start`` (default: cwd) with ``pyproject.toml`` and ``data/``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "data").is_dir():
            return folder
    return None
