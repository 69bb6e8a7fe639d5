"""What the notebook views ask the kernel: is a frontend watching, which cell is running."""

from __future__ import annotations

import os

ENV_MODE = "NYXNB_PROGRESS"


def live_frontend() -> bool:
    """True when the running cell came from an interactive frontend that renders widgets."""
    mode = os.environ.get(ENV_MODE, "auto").strip().lower()
    if mode in ("widget", "text"):
        return mode == "widget"
    from IPython import get_ipython

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:  # plain Python or terminal IPython
        return False
    content = (kernel.get_parent("shell") or {}).get("content") or {}  # the running request
    return bool(content.get("allow_stdin", False))


def execution_count() -> int | None:
    """The running cell's number (None outside IPython): a view shows itself once per cell."""
    from IPython import get_ipython

    shell = get_ipython()
    return None if shell is None else int(shell.execution_count)


__all__ = ["ENV_MODE", "execution_count", "live_frontend"]
