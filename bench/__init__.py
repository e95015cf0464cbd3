"""Ripple's benchmark: `python -m bench run` and `python -m bench soak` (see docs/).

The soak reuses the test suite's process helpers (`tests/support`, imported as `support`,
as pytest imports it). Imports go one way: bench may import `support`; `support` never
imports bench.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)
