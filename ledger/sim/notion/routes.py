"""The Notion API under ``/v1`` (API version 2025-09-03) and the ``/_sim/*`` controls; every
``/v1`` request is logged, checked against outages, auth and faults, and answered in Notion's
shapes (errors as ``{"object": "error", ...}`` with a ``request_id``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.sim import hosting
from ledger.sim.notion.config import (
    SERVER_ERRORS,
    NotionFault,
    NotionSimConfig,
    NotionSimConfigError,
)
from ledger.sim.notion.errors import JSON, NotionError, validation_error
from ledger.sim.notion.query import (
    compile_filter,
    list_body,
    page_size,
    paginate,
    sort_pages,
)
from ledger.sim.notion.store import Workspace, check_type, outage_error, parse_id
from ledger.sim.notion.values import (
    block_content,
    check_children,
    plain_text,
    property_values,
    require,
    rich_text,
    schema_property,
    title_property,
    update_schema,
)

API_VERSION = "2025-09-03"
_MAX_NESTING = 2  # levels of children one request may create

Handler = Callable[[Request, Workspace], Awaitable[Any]]


class JSONResponse(hosting.JSONResponse):
    media_type = "application/json; charset=utf-8"


def _workspace(request: Request) -> Workspace:
    workspace: Workspace = request.app.state.sim
    return workspace


async def _body(request: Request) -> JSON:
    unparsable = NotionError(400, "invalid_json", "Error parsing JSON body.")
    return await hosting.json_object(
        request, not_json=lambda _reason: unparsable, not_object=unparsable
    )


def _check_auth(request: Request, workspace: Workspace) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or token.strip() != workspace.config.token:
        raise NotionError(401, "unauthorized", "API token is invalid.")
    if "notion-version" not in request.headers:
        raise NotionError(
            400,
            "missing_version",
            "Notion-Version header failed validation: Notion-Version header should be defined, "
            "instead was `undefined`.",
        )


async def _apply_faults(request: Request, workspace: Workspace) -> None:
    path = request.url.path.removeprefix("/v1")
    for active in workspace.matching_faults(request.method, path):
        active.hits += 1
        fault = active.fault
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
        elif fault.kind == "rate_limited":
            raise NotionError(
                429,
                "rate_limited",
                "You have been rate limited. Please try again later.",
                {"Retry-After": str(fault.retry_after)},
                {"rate_limit_reason": "public_api_request_rate_limit"},
            )
        else:
            code = SERVER_ERRORS[fault.status]
            raise NotionError(fault.status, code, f"Simulated {code} ({fault.status}).")


def api(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Log the request, then: outage → auth and version → faults → the handler; a
    ``NotionError`` becomes Notion's error body. Every body carries a ``request_id``."""

    async def endpoint(request: Request) -> Response:
        workspace = _workspace(request)
        moment = workspace.config.clock()
        entry: JSON = {
            "method": request.method,
            "path": request.url.path,
            "at": moment.isoformat(),
            "time": moment.timestamp(),
        }
        workspace.requests.append(entry)
        request_id = str(uuid.uuid4())
        try:
            if workspace.in_outage():
                raise outage_error()
            _check_auth(request, workspace)
            await _apply_faults(request, workspace)
            result = await handler(request, workspace)
            response = JSONResponse({**result, "request_id": request_id})
        except NotionError as err:
            response = JSONResponse(err.body(request_id), err.status, err.headers)
        entry["status"] = response.status_code
        return response

    return endpoint


# --------------------------------------------------------------------------------------------
# Pages and blocks
# --------------------------------------------------------------------------------------------


def _parent_schema(workspace: Workspace, raw: Any) -> tuple[JSON, dict[str, JSON]]:
    """(the parent in read shape, the schema its page properties follow) for a new page."""
    if not isinstance(raw, Mapping):
        raise validation_error("body failed validation: body.parent should be an object.")
    if "data_source_id" in raw or "database_id" in raw:
        if "data_source_id" in raw:
            source = workspace.data_source(str(raw["data_source_id"]))
        else:
            database = workspace.database(str(raw["database_id"]))
            source = workspace.data_sources[database["_data_source_ids"][0]]
        parent = {
            "type": "data_source_id",
            "data_source_id": source["id"],
            "database_id": source["parent"]["database_id"],
        }
        return parent, source["properties"]
    if "page_id" in raw:
        page = workspace.page(str(raw["page_id"]))
        parent = {"type": "page_id", "page_id": page["id"]}
    elif raw.get("workspace") is True:
        parent = {"type": "workspace", "workspace": True}
    else:
        raise validation_error(
            "body failed validation: body.parent should be a page_id, data_source_id, "
            "database_id or workspace parent."
        )
    return parent, {"title": {"id": "title", "name": "title", "type": "title", "title": {}}}


def _append(
    workspace: Workspace, parent_id: str, children: Any, where: str, depth: int
) -> list[JSON]:
    """Validate every block first (nothing is added when one is refused), then add them."""
    check_children(children, where)
    if depth > _MAX_NESTING:
        raise validation_error(
            f"body failed validation: {where}: at most {_MAX_NESTING} levels of nesting."
        )
    parsed = [
        block_content(raw, f"{where}[{i}]", workspace.users) for i, raw in enumerate(children)
    ]
    for i, (kind, _content, nested) in enumerate(parsed):
        if nested:
            _validate_nested(workspace, nested, f"{where}[{i}].{kind}.children", depth + 1)
    added = []
    for kind, content, nested in parsed:
        block = workspace.add_block(parent_id, kind, content)
        if nested:
            _append(workspace, block["id"], nested, "", depth + 1)
        added.append(block)
    return added


def _validate_nested(workspace: Workspace, children: Any, where: str, depth: int) -> None:
    check_children(children, where)
    if depth > _MAX_NESTING:
        raise validation_error(
            f"body failed validation: {where}: at most {_MAX_NESTING} levels of nesting."
        )
    for i, raw in enumerate(children):
        kind, _content, nested = block_content(raw, f"{where}[{i}]", workspace.users)
        if nested:
            _validate_nested(workspace, nested, f"{where}[{i}].{kind}.children", depth + 1)


async def create_page(request: Request, workspace: Workspace) -> JSON:
    body = await _body(request)
    parent, schema = _parent_schema(workspace, require(body, "parent"))
    properties = property_values(
        body.get("properties") or {}, schema, workspace.users, workspace.new_id
    )
    if parent["type"] != "data_source_id":
        properties = title_property(properties.get("title", {}).get("title", []))
    else:
        for name, prop in schema.items():  # unset properties read as empty
            properties.setdefault(name, _empty_value(prop))
    children = body.get("children") or []
    check_children(children)
    _validate_nested(workspace, children, "body.children", 1)
    page = workspace.add_page(workspace.new_id(), parent, properties)
    for key in ("icon", "cover"):
        if key in body:
            page[key] = body[key]
    _append(workspace, page["id"], children, "body.children", 1)
    return page


def _empty_value(prop: JSON) -> JSON:
    kind = prop["type"]
    empty: Any = {"title": [], "rich_text": [], "multi_select": [], "relation": [],
                  "checkbox": False}.get(kind)  # fmt: skip
    value: JSON = {"id": prop["id"], "type": kind, kind: empty}
    if kind == "relation":
        value["has_more"] = False
    return value


async def retrieve_page(request: Request, workspace: Workspace) -> JSON:
    return workspace.page(request.path_params["id"])


async def update_page(request: Request, workspace: Workspace) -> JSON:
    page = workspace.page(request.path_params["id"])
    body = await _body(request)
    if "properties" in body:
        parent = page["parent"]
        if parent["type"] == "data_source_id":
            schema = workspace.data_sources[parent["data_source_id"]]["properties"]
        else:
            schema = {"title": {"id": "title", "name": "title", "type": "title", "title": {}}}
        changes = property_values(body["properties"], schema, workspace.users, workspace.new_id)
        page["properties"] |= changes
    for key in ("in_trash", "archived"):
        if key in body:
            trashed = bool(check_type(body[key], bool, f"body.{key}"))
            page["in_trash"] = page["archived"] = page["is_archived"] = trashed
    for key in ("icon", "cover", "is_locked"):
        if key in body:
            page[key] = body[key]
    workspace.touch(page)
    return page


async def append_children(request: Request, workspace: Workspace) -> JSON:
    parent_id, parent = workspace.block_parent(request.path_params["id"])
    body = await _body(request)
    added = _append(workspace, parent_id, require(body, "children"), "body.children", 1)
    workspace.touch(parent)
    return list_body(added, None, "block")


async def list_children(request: Request, workspace: Workspace) -> JSON:
    parent_id, _parent = workspace.block_parent(request.path_params["id"])
    blocks = [workspace.blocks[b] for b in workspace.children.get(parent_id, [])]
    size = page_size(request.query_params.get("page_size"))
    chunk, cursor = paginate(blocks, request.query_params.get("start_cursor"), size)
    return list_body(chunk, cursor, "block")


# --------------------------------------------------------------------------------------------
# Databases and data sources
# --------------------------------------------------------------------------------------------


def _schema(workspace: Workspace, raw: Any) -> dict[str, JSON]:
    if not isinstance(raw, Mapping):
        raise validation_error("body failed validation: body.properties should be an object.")
    schema = {
        str(name): schema_property(str(name), prop, workspace.new_id, workspace.short_id)
        for name, prop in raw.items()
    }
    titles = [p for p in schema.values() if p["type"] == "title"]
    if len(titles) > 1:
        raise validation_error("A data source can have only one title property.")
    if not titles:
        schema = {
            "Name": schema_property("Name", {"title": {}}, workspace.new_id, workspace.short_id)
        } | schema
    return schema


def _new_data_source(
    workspace: Workspace, database: JSON, title: list[JSON], schema: dict[str, JSON]
) -> JSON:
    source_id = workspace.new_id()
    source: JSON = {
        "object": "data_source",
        "id": source_id,
        "cover": None,
        "icon": None,
        **{k: v for k, v in database.items() if k in ("created_time", "created_by")},
        "last_edited_by": workspace.user_ref(),
        "last_edited_time": workspace.now(),
        "title": title,
        "description": [],
        "is_inline": database["is_inline"],
        "properties": schema,
        "parent": {"type": "database_id", "database_id": database["id"]},
        "database_parent": database["parent"],
        "url": database["url"],
        "public_url": None,
        "in_trash": False,
        "archived": False,
    }
    workspace.data_sources[source_id] = source
    database["_data_source_ids"].append(source_id)
    return source


async def create_database(request: Request, workspace: Workspace) -> JSON:
    body = await _body(request)
    raw_parent = require(body, "parent")
    if not isinstance(raw_parent, Mapping):
        raise validation_error("body failed validation: body.parent should be an object.")
    if "page_id" in raw_parent:
        parent_page = workspace.page(str(raw_parent["page_id"]))
        parent: JSON = {"type": "page_id", "page_id": parent_page["id"]}
    elif raw_parent.get("workspace") is True:
        parent = {"type": "workspace", "workspace": True}
    else:
        raise validation_error(
            "body failed validation: body.parent should be a page_id or workspace parent."
        )
    title = rich_text(body.get("title") or [], "body.title", workspace.users)
    initial = body.get("initial_data_source") or {}
    if not isinstance(initial, Mapping):
        raise validation_error(
            "body failed validation: body.initial_data_source should be an object."
        )
    schema = _schema(workspace, initial.get("properties") or {})
    database_id = workspace.new_id()
    now = workspace.now()
    database: JSON = {
        "object": "database",
        "id": database_id,
        "title": title,
        "description": rich_text(
            body.get("description") or [], "body.description", workspace.users
        ),
        "parent": parent,
        "is_inline": bool(body.get("is_inline", False)),
        "in_trash": False,
        "is_locked": False,
        "created_time": now,
        "last_edited_time": now,
        "created_by": workspace.user_ref(),
        "icon": body.get("icon"),
        "cover": body.get("cover"),
        "url": f"https://app.notion.com/p/{database_id.replace('-', '')}",
        "public_url": None,
        "archived": False,
        "_data_source_ids": [],
    }
    workspace.databases[database_id] = database
    source_title = title
    if initial.get("title"):
        source_title = rich_text(
            initial["title"], "body.initial_data_source.title", workspace.users
        )
    _new_data_source(workspace, database, source_title, schema)
    if parent["type"] == "page_id":
        workspace.add_block(
            parent["page_id"], "child_database", {"title": plain_text(title)}, block_id=database_id
        )
    return workspace.database_view(database)


async def retrieve_database(request: Request, workspace: Workspace) -> JSON:
    return workspace.database_view(workspace.database(request.path_params["id"]))


async def retrieve_data_source(request: Request, workspace: Workspace) -> JSON:
    return workspace.data_source(request.path_params["id"])


async def update_data_source(request: Request, workspace: Workspace) -> JSON:
    source = workspace.data_source(request.path_params["id"])
    body = await _body(request)
    if "title" in body:
        source["title"] = rich_text(body["title"], "body.title", workspace.users)
    if "properties" in body:
        changes = check_type(body["properties"], dict, "body.properties")
        schema = dict(source["properties"])
        update_schema(schema, changes, workspace.new_id, workspace.short_id)
        source["properties"] = schema
    for key in ("in_trash", "archived"):
        if key in body:
            source["in_trash"] = source["archived"] = bool(body[key])
    workspace.touch(source)
    return source


async def query_data_source(request: Request, workspace: Workspace) -> JSON:
    source = workspace.data_source(request.path_params["id"])
    body = await _body(request)
    schema = source["properties"]
    rows = [
        p
        for p in workspace.pages.values()
        if p["parent"].get("data_source_id") == source["id"] and not p["in_trash"]
    ]
    if body.get("filter") is not None:
        test = compile_filter(body["filter"], schema)
        rows = [p for p in rows if test(p)]
    rows = sort_pages(rows, body.get("sorts"), schema)
    chunk, cursor = paginate(rows, body.get("start_cursor"), page_size(body.get("page_size")))
    return list_body(chunk, cursor, "page_or_data_source")


# --------------------------------------------------------------------------------------------
# Search, comments, users
# --------------------------------------------------------------------------------------------


async def search(request: Request, workspace: Workspace) -> JSON:
    body = await _body(request)
    query = str(body.get("query") or "").lower()
    kinds = {"page", "data_source"}
    search_filter = body.get("filter")
    if search_filter is not None:
        if not isinstance(search_filter, Mapping) or search_filter.get("value") not in kinds:
            raise validation_error(
                'body failed validation: body.filter.value should be `"page"` or '
                f'`"data_source"`, instead was `{(search_filter or {}).get("value")!r}`.'
            )
        kinds = {str(search_filter["value"])}
    found: list[JSON] = []
    if "page" in kinds:
        found += [
            p
            for p in workspace.pages.values()
            if not p["in_trash"] and query in workspace.page_title(p).lower()
        ]
    if "data_source" in kinds:
        found += [
            s
            for s in workspace.data_sources.values()
            if not s["in_trash"] and query in plain_text(s["title"]).lower()
        ]
    sort = body.get("sort") or {}
    ascending = isinstance(sort, Mapping) and sort.get("direction") == "ascending"
    found.sort(key=lambda o: o["last_edited_time"], reverse=not ascending)
    chunk, cursor = paginate(found, body.get("start_cursor"), page_size(body.get("page_size")))
    return list_body(chunk, cursor, "page_or_data_source")


async def create_comment(request: Request, workspace: Workspace) -> JSON:
    body = await _body(request)
    parent_raw = body.get("parent")
    discussion = body.get("discussion_id")
    if (parent_raw is None) == (discussion is None):
        raise validation_error(
            "body failed validation: send exactly one of body.parent and body.discussion_id."
        )
    if discussion is not None:
        earlier = [
            c
            for c in workspace.comments
            if c["discussion_id"] == parse_id(str(discussion), "discussion_id")
        ]
        if not earlier:
            raise NotionError(
                404, "object_not_found", f"Could not find discussion with ID: {discussion}."
            )
        parent = earlier[0]["parent"]
        discussion_id = earlier[0]["discussion_id"]
    else:
        if not isinstance(parent_raw, Mapping) or ("page_id" in parent_raw) == (
            "block_id" in parent_raw
        ):
            raise validation_error(
                "body failed validation: body.parent should have one of page_id and block_id."
            )
        kind = "page_id" if "page_id" in parent_raw else "block_id"
        object_id, _obj = workspace.block_parent(str(parent_raw[kind]), kind)
        parent = {"type": kind, kind: object_id}
        discussion_id = workspace.new_id()
    now = workspace.now()
    comment: JSON = {
        "object": "comment",
        "id": workspace.new_id(),
        "parent": parent,
        "discussion_id": discussion_id,
        "created_time": now,
        "last_edited_time": now,
        "created_by": workspace.user_ref(),
        "rich_text": rich_text(require(body, "rich_text"), "body.rich_text", workspace.users),
        "display_name": {"type": "integration", "resolved_name": workspace.bot["name"]},
    }
    workspace.comments.append(comment)
    return comment


async def list_comments(request: Request, workspace: Workspace) -> JSON:
    raw = request.query_params.get("block_id")
    if raw is None:
        raise validation_error(
            "body failed validation: query.block_id should be defined, instead was `undefined`."
        )
    object_id, _obj = workspace.block_parent(raw)
    found = [c for c in workspace.comments if object_id in c["parent"].values()]
    size = page_size(request.query_params.get("page_size"))
    chunk, cursor = paginate(found, request.query_params.get("start_cursor"), size)
    return list_body(chunk, cursor, "comment")


async def users_me(request: Request, workspace: Workspace) -> JSON:
    return workspace.bot


async def list_users(request: Request, workspace: Workspace) -> JSON:
    size = page_size(request.query_params.get("page_size"))
    users = list(workspace.users.values())
    chunk, cursor = paginate(users, request.query_params.get("start_cursor"), size)
    return list_body(chunk, cursor, "user")


# --------------------------------------------------------------------------------------------
# Controls (/_sim/*) and the app
# --------------------------------------------------------------------------------------------


async def sim_faults(request: Request) -> Response:
    """GET lists the faults; POST adds one (or ``{"faults": [...]}``); DELETE clears them."""
    workspace = _workspace(request)
    if request.method == "GET":
        return JSONResponse({"faults": [f.view() for f in workspace.faults]})
    if request.method == "DELETE":
        cleared = len(workspace.faults)
        workspace.faults.clear()
        return JSONResponse({"cleared": cleared})
    try:
        body = await _body(request)
        raws = body["faults"] if isinstance(body.get("faults"), list) else [body]
        faults = [NotionFault.from_mapping(raw, f"faults[{i}]") for i, raw in enumerate(raws)]
    except (NotionError, NotionSimConfigError) as exc:
        return JSONResponse(
            {"error": str(exc.message if isinstance(exc, NotionError) else exc)}, 400
        )
    return JSONResponse({"faults": [workspace.add_fault(f).view() for f in faults]}, 201)


async def sim_requests(request: Request) -> Response:
    """GET: every ``/v1`` request so far (method, path, at, time, status); DELETE clears."""
    workspace = _workspace(request)
    if request.method == "DELETE":
        cleared = len(workspace.requests)
        workspace.requests.clear()
        return JSONResponse({"cleared": cleared})
    return JSONResponse({"requests": workspace.requests})


async def sim_reset(request: Request) -> Response:
    workspace = _workspace(request)
    workspace.reset()
    return JSONResponse({"reset": True, "root_page_id": workspace.config.root_page_id})


async def _not_a_route(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer as Notion does: 400 ``invalid_request_url``."""
    error = NotionError(400, "invalid_request_url", "Invalid request URL.")
    if isinstance(exc, HTTPException) and exc.status_code >= 500:
        error = NotionError(500, "internal_server_error", "Internal error.")
    return JSONResponse(error.body(str(uuid.uuid4())), error.status)


def create_app(config: NotionSimConfig) -> Starlette:
    """The Notion simulator as an ASGI app; ``app.state.sim`` is its ``Workspace``."""
    routes = [
        Route("/v1/pages", api(create_page), methods=["POST"]),
        Route("/v1/pages/{id}", api(retrieve_page), methods=["GET"]),
        Route("/v1/pages/{id}", api(update_page), methods=["PATCH"]),
        Route("/v1/blocks/{id}/children", api(list_children), methods=["GET"]),
        Route("/v1/blocks/{id}/children", api(append_children), methods=["PATCH"]),
        Route("/v1/databases", api(create_database), methods=["POST"]),
        Route("/v1/databases/{id}", api(retrieve_database), methods=["GET"]),
        Route("/v1/data_sources/{id}", api(retrieve_data_source), methods=["GET"]),
        Route("/v1/data_sources/{id}", api(update_data_source), methods=["PATCH"]),
        Route("/v1/data_sources/{id}/query", api(query_data_source), methods=["POST"]),
        Route("/v1/search", api(search), methods=["POST"]),
        Route("/v1/comments", api(create_comment), methods=["POST"]),
        Route("/v1/comments", api(list_comments), methods=["GET"]),
        Route("/v1/users/me", api(users_me), methods=["GET"]),
        Route("/v1/users", api(list_users), methods=["GET"]),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", sim_requests, methods=["GET", "DELETE"]),
        Route("/_sim/reset", sim_reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _not_a_route})
    app.state.sim = Workspace(config)
    return app
