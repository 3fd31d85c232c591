"""A local stand-in for Notion (API version 2025-09-03): pages, blocks, databases holding data
sources, queries with filters/sorts/pagination, search, comments and users, spoken in Notion's
wire formats, with the validation and errors the daemon must handle, injectable faults
(``/_sim/faults``) and a request log (``/_sim/requests``).

It imports nothing from the daemon: it is what the outside world looks like. Build it with
``create_app(NotionSimConfig(...))``; start it with ``serve()`` (the CLI), ``run_in_thread()``
or ``run_in_background()`` (tests). The workspace starts with one workspace-level page
(``NotionSimConfig.root_page_id``) shared with the integration.
"""

from ledger.sim.notion.config import (
    DEFAULT_ROOT_PAGE_ID,
    DEFAULT_TOKEN,
    NotionFault,
    NotionSimConfig,
    NotionSimConfigError,
)
from ledger.sim.notion.routes import API_VERSION, create_app
from ledger.sim.notion.server import run_in_background, run_in_thread, serve

__all__ = [
    "API_VERSION",
    "DEFAULT_ROOT_PAGE_ID",
    "DEFAULT_TOKEN",
    "NotionFault",
    "NotionSimConfig",
    "NotionSimConfigError",
    "create_app",
    "run_in_background",
    "run_in_thread",
    "serve",
]
