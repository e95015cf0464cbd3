"""The chaos soak in its 2-minute form (`python -m bench soak` runs the same code for longer).

500 streams over two instances of two workers behind PgBouncer, three Chromium pages, 20
posts a second, and a fault every 20 to 30 s; then the checker compares every client and
every acknowledged write with the database. Faults are real (see bench/chaos.py).
"""

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from support.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]


def _soak() -> Any:
    """bench is a top-level package beside tests/, not installed: import it from the tree."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("bench.soak")


async def test_chaos_soak_loses_nothing(tmp_path: Path) -> None:
    soak = _soak()
    # Seed 31 draws listener_kill, postgres_restart, client_link_cut, db_link_cut and
    # pgbouncer_restart in 2 minutes (seed 1, the command's default, starts with the others).
    options = soak.SoakOptions(minutes=2.0, seed=31, out_dir=tmp_path, chart=False)
    result = await soak.run_soak(options)
    report = soak.summary(result)
    print(report)
    faults = result["timeline"]["faults"]
    checker = result["checker"]
    # The run did what it claims: faults happened, items flowed, clients were disturbed.
    assert len(faults) >= 3, report
    assert len({f["kind"] for f in faults}) == len(faults), report
    assert checker["posts"]["acknowledged"] > 1000, report
    assert checker["deliveries"] > 100 * checker["clients"], report
    assert checker["reconnects"] + checker["resyncs"] > 0, report  # clients were disturbed
    # And nothing was lost, doubled or left stale.
    assert result["problems"] == [], report
