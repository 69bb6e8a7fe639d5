"""A simulated batch for the ``offline`` provider (demos and notebooks; no network).

The batch id encodes its submission time and custom ids' digest, so a resume in a new process
re-adopts it; it ends ``delay_s`` after submission and answers like the offline provider.  A
cancel before then ends it at once with every item ``canceled`` (in this process only: the
simulation keeps no state beyond the batch id).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from nyxnb.providers.base import CompletionRequest
from nyxnb.providers.batch_base import (
    CANCELED,
    SUCCEEDED,
    BatchApi,
    BatchItemResult,
    BatchStatus,
)

#: Seconds a simulated batch takes (``NYXNB_OFFLINE_BATCH_S``, default 0).
DELAY_ENV = "NYXNB_OFFLINE_BATCH_S"
_CANCELED: set[str] = set()  # batches canceled before they ended (this process)


def _ended(batch_id: str) -> bool:
    _, submitted, _, _ = batch_id.split("_")
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    return time.time() * 1000 >= int(submitted) + delay * 1000


class OfflineBatches(BatchApi):
    """Deterministic local batches."""

    async def submit(self, requests: Sequence[tuple[str, CompletionRequest]], tag: str = "") -> str:
        """A batch id ``offbatch_<submitted ms>_<n>_<digest>``."""
        digest = hashlib.sha256("".join(cid for cid, _ in requests).encode()).hexdigest()[:12]
        return f"offbatch_{int(time.time() * 1000)}_{len(requests)}_{digest}"

    async def status(self, batch_id: str) -> BatchStatus:
        """Processing until ``NYXNB_OFFLINE_BATCH_S`` after submission, then ended."""
        n = int(batch_id.split("_")[2])
        if batch_id in _CANCELED:
            return BatchStatus(True, {"processing": 0, SUCCEEDED: 0, CANCELED: n}, "ended")
        ended = _ended(batch_id)
        counts = {"processing": 0 if ended else n, SUCCEEDED: n if ended else 0}
        return BatchStatus(ended, counts, "ended" if ended else "in_progress")

    async def item_results(
        self, batch_id: str, requests: Mapping[str, CompletionRequest]
    ) -> AsyncIterator[BatchItemResult]:
        """Every item succeeds with the offline provider's answer (or was canceled)."""
        for cid, request in requests.items():
            if batch_id in _CANCELED:
                yield BatchItemResult(cid, CANCELED)
                continue
            yield BatchItemResult(cid, SUCCEEDED, await self.provider.complete(request))

    async def cancel(self, batch_id: str) -> None:
        """End a batch still processing: its items are ``canceled``."""
        if not _ended(batch_id):
            _CANCELED.add(batch_id)
