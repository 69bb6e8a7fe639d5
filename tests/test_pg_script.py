"""``.ci/pg.sh``: each checkout has its own server, and ``start`` never deletes a server's data."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "pg.sh"
PGBIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


def _pg(checkout: Path, command: str, port: int) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PGROOT", "PGPORT")}
    env["PGPORT"] = str(port)  # a private port; PGROOT left to the script's default
    done = subprocess.run(["bash", str(checkout / ".ci" / "pg.sh"), command], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.postgres
@pytest.mark.slow
def test_start_keeps_a_servers_data_in_its_own_checkout():
    if PGBIN is None or not os.environ.get("NYXNB_TEST_PG_URL"):
        pytest.skip("needs PostgreSQL binaries (the suite's PG tests are enabled)")
    checkout = Path(tempfile.mkdtemp(prefix="nyxnb-checkout-"))  # /tmp: postgres can enter it
    checkout.chmod(0o755)
    (checkout / ".ci").mkdir()
    shutil.copy(SCRIPT, checkout / ".ci" / "pg.sh")
    port = 54000 + random.randint(100, 899)
    try:
        url = _pg(checkout, "start", port)
        data = checkout / ".pg" / "data"
        assert data.is_dir() and url.endswith(f":{port}/postgres")  # per checkout, not /tmp
        marker = data / "kept.txt"
        marker.write_text("mine")
        assert _pg(checkout, "start", port) == url  # running: reused as is
        _pg(checkout, "stop", port)
        assert _pg(checkout, "start", port) == url  # stopped: started again, not re-created
        assert marker.read_text() == "mine"
    finally:
        _pg(checkout, "stop", port)
        shutil.rmtree(checkout, ignore_errors=True)
