"""The garbage collector is set once start-up is done: start-up's heap frozen out of later
collections, a wider young generation."""

from __future__ import annotations

import subprocess
import sys


def test_settle_heap_freezes_start_up_objects_and_widens_the_young_generation() -> None:
    code = (
        "import gc\n"
        "from ledger.heap import GC_THRESHOLDS, settle_heap\n"
        "registry = [[i] for i in range(10_000)]\n"  # lists: tracked by the collector
        "settle_heap()\n"
        "assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == GC_THRESHOLDS\n"
        "del registry\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
