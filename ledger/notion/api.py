"""The one Notion client of the process: ``notion-client`` 3.x (``AsyncClient``, its own retries
off — the outbox and the callers own retries), every request through the shared
``TokenBucket``, and every foreign error translated here into ``NotionError`` carrying the retry
decision (``permanent``, ``retry_after``, ``status_code``).

- 429 → ``retry_after`` from ``Retry-After`` (and the whole bucket pauses that long);
- 5xx, 529, 409 and timeouts / connection failures → transient (backoff with jitter);
- 400 / 401 / 403 / 404 → permanent, with Notion's own message (retrying cannot help).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import httpx
from notion_client import AsyncClient
from notion_client.errors import (
    HTTPResponseError,
    InvalidPathParameterError,
    RequestTimeoutError,
)

from ledger.errors import NotionError
from ledger.http import parse_retry_after
from ledger.logging import mask_text
from ledger.notion.limiter import TokenBucket

__all__ = ["MAX_CHILDREN", "PAGE_SIZE", "NotionApi", "translate"]

T = TypeVar("T")

PAGE_SIZE: Final = 100  # Notion's maximum page_size
MAX_CHILDREN: Final = 100  # blocks per append request
DEFAULT_TIMEOUT_MS: Final = 30_000
_PERMANENT: Final = frozenset({400, 401, 403, 404})
_logger = logging.getLogger("notion_client")


def translate(exc: Exception, what: str) -> NotionError:
    """``exc`` (raised by notion-client or httpx while doing ``what``) as a ``NotionError``."""
    if isinstance(exc, HTTPResponseError):
        status = int(exc.status)
        message = mask_text(str(exc) or f"HTTP {status}")
        raw_code = getattr(exc, "code", "") or ""
        code = str(getattr(raw_code, "value", raw_code))
        text = f"Notion refused {what}: {status} {code}: {message}".replace("  ", " ")
        if status == 429:
            retry_after = parse_retry_after(exc.headers.get("retry-after")) or 1.0
            return NotionError(text, status_code=status, retry_after=retry_after)
        return NotionError(text, status_code=status, permanent=status in _PERMANENT)
    if isinstance(exc, RequestTimeoutError):
        return NotionError(f"Notion did not answer {what} in time")
    if isinstance(exc, InvalidPathParameterError):
        return NotionError(f"{what}: invalid id ({exc})", permanent=True)
    if isinstance(exc, httpx.HTTPError):
        return NotionError(f"cannot reach Notion for {what}: {type(exc).__name__}: {exc}")
    return NotionError(f"{what}: unexpected {type(exc).__name__}: {mask_text(str(exc))}")


class NotionApi:
    """What the mirror, the actions, the comment channel and the approval poller call.
    Create it in the lifespan (or a CLI command) and ``await aclose()`` it."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://api.notion.com",
        limiter: TokenBucket | None = None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        self.limiter = limiter or TokenBucket()
        self._http = httpx.AsyncClient()  # notion-client rewrites its base_url and headers
        self.client = AsyncClient(
            client=self._http,
            auth=token,
            base_url=base_url.rstrip("/"),
            timeout_ms=timeout_ms,
            retry=False,
            logger=_logger,
            # Its per-request warnings would repeat ours: every failure reaches the caller.
            log_level=logging.ERROR,
        )
        self.requests = 0  # sent so far (for tests and `ledger notion sync`)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self._http.aclose()

    async def call(self, what: str, fn: Callable[..., Awaitable[Any]], /, **kwargs: Any) -> Any:
        """One request, within the rate limit; raises ``NotionError``."""
        await self.limiter.acquire()
        self.requests += 1
        try:
            return await fn(**kwargs)
        except Exception as exc:
            error = translate(exc, what)
            if error.retry_after is not None:
                self.limiter.pause(error.retry_after)
            raise error from exc

    # -- pages and data sources ------------------------------------------------------------

    async def query(
        self, data_source_id: str, filter: Mapping[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row of a data source (matching ``filter``), page after page."""
        cursor: str | None = None
        while True:
            body: dict[str, Any] = {"data_source_id": data_source_id, "page_size": PAGE_SIZE}
            if filter is not None:
                body["filter"] = dict(filter)
            if cursor:
                body["start_cursor"] = cursor
            found = await self.call(
                f"a query of data source {data_source_id}", self.client.data_sources.query, **body
            )
            for row in found.get("results", []):
                yield row
            cursor = found.get("next_cursor")
            if not found.get("has_more") or not cursor:
                return

    async def create_page(
        self, parent: Mapping[str, Any], properties: Mapping[str, Any], children: Sequence[Any] = ()
    ) -> dict[str, Any]:
        """A page (a row when ``parent`` is a data source); children past the first 100 are
        appended in batches of 100."""
        first, rest = list(children[:MAX_CHILDREN]), list(children[MAX_CHILDREN:])
        kwargs: dict[str, Any] = {"parent": dict(parent), "properties": dict(properties)}
        if first:
            kwargs["children"] = first
        page: dict[str, Any] = await self.call(
            "creating a page", self.client.pages.create, **kwargs
        )
        if rest:
            await self.append(page["id"], rest)
        return page

    async def update_page(self, page_id: str, properties: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            f"updating page {page_id}",
            self.client.pages.update,
            page_id=page_id,
            properties=dict(properties),
        )
        return result

    async def append(self, block_id: str, children: Sequence[Any]) -> int:
        """Append blocks in batches of 100; returns the number of requests sent."""
        sent = 0
        for start in range(0, len(children), MAX_CHILDREN):
            await self.call(
                f"appending to {block_id}",
                self.client.blocks.children.append,
                block_id=block_id,
                children=list(children[start : start + MAX_CHILDREN]),
            )
            sent += 1
        return sent

    async def children(self, block_id: str) -> AsyncIterator[dict[str, Any]]:
        """Every child block of a page or block, in order, page after page."""
        cursor: str | None = None
        while True:
            body: dict[str, Any] = {"block_id": block_id, "page_size": PAGE_SIZE}
            if cursor:
                body["start_cursor"] = cursor
            found = await self.call(
                f"reading the blocks of {block_id}", self.client.blocks.children.list, **body
            )
            for block in found.get("results", []):
                yield block
            cursor = found.get("next_cursor")
            if not found.get("has_more") or not cursor:
                return

    async def retrieve_database(self, database_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            f"reading database {database_id}",
            self.client.databases.retrieve,
            database_id=database_id,
        )
        return result

    async def retrieve_data_source(self, data_source_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            f"reading data source {data_source_id}",
            self.client.data_sources.retrieve,
            data_source_id=data_source_id,
        )
        return result

    async def create_database(self, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            "creating a database", self.client.databases.create, **body
        )
        return result

    async def update_data_source(self, data_source_id: str, **body: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            f"updating data source {data_source_id}",
            self.client.data_sources.update,
            data_source_id=data_source_id,
            **body,
        )
        return result

    async def search_data_sources(self, query: str) -> list[dict[str, Any]]:
        """Data sources whose title contains ``query`` (every page of results)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            body: dict[str, Any] = {
                "query": query,
                "filter": {"property": "object", "value": "data_source"},
                "page_size": PAGE_SIZE,
            }
            if cursor:
                body["start_cursor"] = cursor
            result = await self.call("searching Notion", self.client.search, **body)
            found += result.get("results", [])
            cursor = result.get("next_cursor")
            if not result.get("has_more") or not cursor:
                return found

    async def comment(self, page_id: str, rich_text: Sequence[Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.call(
            f"commenting on page {page_id}",
            self.client.comments.create,
            parent={"page_id": page_id},
            rich_text=list(rich_text),
        )
        return result
