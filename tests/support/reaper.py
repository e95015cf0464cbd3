"""Last-resort cleanup at interpreter exit.

Fixtures stop what they start in ``finally`` blocks; this catches what escapes them (an
interrupted session, a helper used outside a fixture), since our children live in their own
sessions and would otherwise outlive pytest.
"""

import atexit
from collections.abc import Callable

_cleanups: dict[int, Callable[[], object]] = {}


def track(owner: object, cleanup: Callable[[], object]) -> None:
    """Run ``cleanup`` at exit unless ``untrack(owner)`` is called first."""
    _cleanups[id(owner)] = cleanup


def untrack(owner: object) -> None:
    _cleanups.pop(id(owner), None)


@atexit.register
def run_all() -> None:
    """Run every cleanup still registered (also at exit); a failing one does not stop the rest."""
    for cleanup in list(_cleanups.values()):
        try:
            cleanup()
        except Exception as exc:
            print(f"cleanup at exit failed: {exc!r}")
    _cleanups.clear()
