"""Outbox tests. ``capture_server`` (tests/servers.py) is the loopback endpoint alerts and
actions are sent to; importable from here too for tests written against this package."""

from tests.servers import Capture, Captured, capture_server

__all__ = ["Capture", "Captured", "capture_server"]
