"""Garbage-collector settings for a server that holds thousands of open connections.

CPython's collector walks every tracked object of a generation when it collects it. A
worker holding thousands of streams and keep-alive connections has a large heap, and
every request allocates enough containers to trigger collections: measured with 1,000
pages fetching over their own connections, the collector was a fifth of the worker's CPU
and stalled the event loop (docs/benchmarks.md, "Against a Node.js peer"). So:

- `gc.freeze()` once the app is built: what exists at start (modules, routes, templates)
  is never walked again;
- a higher first threshold, so the young generation is collected less often, in larger
  batches (request objects die young; cycles among them are still found).

`RIPPLE_GC_POLICY=default` leaves CPython's defaults (for measuring the difference).
"""

from __future__ import annotations

import gc
import os

YOUNG_THRESHOLD = 20_000  # CPython's default is 700
OLDER_THRESHOLDS = (20, 20)  # (10, 10) by default


def apply() -> bool:
    """Apply the policy unless switched off; whether it was applied."""
    if os.environ.get("RIPPLE_GC_POLICY", "").strip().lower() == "default":
        return False
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    return True
