"""A local stand-in for OpenRouter: chat completions (in JSON when ``response_format`` asks for
it), key inspection, the key management API, programmable faults and the observability
broadcast, spoken in OpenRouter's wire formats.

It imports nothing from the daemon: it is what the outside world looks like. Build it with
``create_app(SimConfig(...))``, start it with ``serve()`` (the CLI) or ``run_in_background()``
(tests), and steer it at runtime through the ``/_sim/*`` control endpoints.
"""

from ledger.sim.hosting import run_asgi_in_background
from ledger.sim.openrouter.answers import json_answer, read_response_format, schema_instance
from ledger.sim.openrouter.broadcast import GenerationRecord, build_broadcast
from ledger.sim.openrouter.config import (
    Fault,
    FaultKind,
    ModelInfo,
    Preset,
    SimConfig,
    SimConfigError,
    SimKey,
)
from ledger.sim.openrouter.routes import create_app
from ledger.sim.openrouter.server import run_in_background, run_in_thread, serve
from ledger.sim.openrouter.state import limit_exceeded_message

__all__ = [
    "Fault",
    "FaultKind",
    "GenerationRecord",
    "ModelInfo",
    "Preset",
    "SimConfig",
    "SimConfigError",
    "SimKey",
    "build_broadcast",
    "create_app",
    "json_answer",
    "limit_exceeded_message",
    "read_response_format",
    "run_asgi_in_background",
    "run_in_background",
    "run_in_thread",
    "schema_instance",
    "serve",
]
