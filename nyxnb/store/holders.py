"""Who holds a run's lease, and whether that process is still alive.

A run's lease is two columns of ``workflows``: ``lease_owner``, a token ``host:pid:nonce`` new
for every run, and ``lease_expires_at``, pushed :data:`TTL_S` ahead at each renewal.  The engine
takes and renews leases (``nyxnb.engine.durable.lease``); every reader of the store (``nyxnb
show``, ``nyxnb list``, the notebook's views) judges from the same two columns whether a run
still has a runner.  A holder on this host is asked directly (is its process alive?), so a
killed run reads dead at once; another host's holder is dead only once its lease expired.
"""

from __future__ import annotations

import os
import socket
import uuid

#: How long a lease outlives its last renewal: 6 s, or ``NYXNB_LEASE_TTL_S`` (tests shorten it).
TTL_S = float(os.environ.get("NYXNB_LEASE_TTL_S") or 6.0)
_HOST = socket.gethostname()


def new_owner() -> str:
    """A lease owner token: ``host:pid:nonce``."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(owner: str | None) -> bool:
    """True when a lease's holder is certainly gone: none, or a process of this host that has
    exited (a holder on another host is never judged dead here: only its lease can expire)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
