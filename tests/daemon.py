"""Kept for tests written against it: the daemon helpers live in tests/servers.py now."""

from tests.servers import Daemon, daemon_starter, ledger, names, wait_until

__all__ = ["Daemon", "daemon_starter", "ledger", "names", "wait_until"]
