"""app.gcpolicy: the worker's collector settings, and the switch that leaves the defaults."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from app import gcpolicy


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_apply_freezes_the_startup_heap_and_raises_the_young_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RIPPLE_GC_POLICY", raising=False)
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    assert gcpolicy.apply() is True
    assert gc.get_threshold() == (gcpolicy.YOUNG_THRESHOLD, *gcpolicy.OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 0
    # Objects made afterwards are still collected: a cycle created now is found.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


@pytest.mark.usefixtures("restore_gc")
def test_default_leaves_cpython_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIPPLE_GC_POLICY", "default")
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    assert gcpolicy.apply() is False
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0
