"""Keeps the registry in step with the folder: a file watcher, a periodic rescan, SIGHUP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from ledger.behaviors.load import BEHAVIOR_SUFFIXES

log = structlog.get_logger("ledger.registry")


async def watch_folder(
    directory: Path, trigger: Callable[[], Awaitable[object]], stop: asyncio.Event
) -> None:
    """Call ``trigger`` whenever a behavior file (or a prompt file) in ``directory`` changes."""
    from watchfiles import awatch

    if not directory.is_dir():
        log.warning("behaviors folder not found; watching disabled", path=str(directory))
        return
    try:
        async for changes in awatch(directory, stop_event=stop, recursive=True, debounce=300):
            if any(not Path(p).name.startswith(".") for _, p in changes):
                log.debug("behaviors folder changed", files=len(changes))
                await trigger()
    except (OSError, RuntimeError) as exc:
        log.warning("file watcher stopped; the periodic rescan continues", error=str(exc))


async def rescan_periodically(
    every_seconds: float, trigger: Callable[[], Awaitable[object]], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_seconds)
        except TimeoutError:
            await trigger()


__all__ = ["BEHAVIOR_SUFFIXES", "rescan_periodically", "watch_folder"]
