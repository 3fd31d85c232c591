"""The process's cyclic garbage collector, set for a daemon with a large long-lived heap.

With thousands of behaviors registered, a full collection walks every behavior model,
scheduler job and compiled query each time, and a wave of runs due at once (thousands of
requests alive for seconds) makes full collections frequent: measured with 10,000 behaviors,
they took over a minute of a 15-second preparation window. Freezing the heap once start-up is
done takes those objects out of every later collection (they are still freed by reference
counting), and a larger young generation lets a run's short-lived objects die before they
are promoted.
"""

from __future__ import annotations

import gc

# Allocations between young collections (CPython's default is 700), and how many collections
# of each generation trigger one of the next (default 10 and 10).
GC_THRESHOLDS = (50_000, 20, 20)


def settle_heap() -> None:
    """Collect once, freeze what survived start-up, and widen the young generation. Call it
    when start-up is done (registry loaded, jobs scheduled); calling it again freezes what
    was added since."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
