"""The simulated workspace: pages, databases and their data sources, blocks, comments and
users, held in memory in Notion's read shapes, plus the faults and the request log.
``Workspace.reset()`` rebuilds it from the config (with the workspace-level root page)."""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from ledger.sim.notion.config import NotionFault, NotionSimConfig
from ledger.sim.notion.errors import JSON, NotionError, not_found, validation_error
from ledger.sim.notion.values import plain_text, title_property


@dataclass(slots=True)
class ActiveFault:
    id: int
    fault: NotionFault
    hits: int = 0
    until: float | None = None  # an outage's end (clock timestamp)

    @property
    def exhausted(self) -> bool:
        return self.fault.times is not None and self.hits >= self.fault.times

    def view(self) -> JSON:
        return {"id": self.id, "hits": self.hits, "until": self.until, **asdict(self.fault)}


def parse_id(raw: str, name: str) -> str:
    """An object id from a path or body in its dashed form; Notion accepts both forms."""
    try:
        return str(uuid.UUID(raw))
    except (ValueError, AttributeError, TypeError) as exc:
        raise validation_error(
            f"path failed validation: path.{name} should be a valid uuid, instead was `{raw!r}`."
        ) from exc


class Workspace:
    def __init__(self, config: NotionSimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        config = self.config
        self.rng = random.Random(config.seed)  # noqa: S311 - ids for a simulator
        self.pages: dict[str, JSON] = {}
        self.databases: dict[str, JSON] = {}
        self.data_sources: dict[str, JSON] = {}
        self.blocks: dict[str, JSON] = {}
        self.children: dict[str, list[str]] = {}
        self.comments: list[JSON] = []
        self.requests: list[JSON] = []
        self.faults: list[ActiveFault] = []
        self.next_fault_id = 1
        self.bot: JSON = {
            "object": "user",
            "id": self.new_id(),
            "name": "Promotion Ledger (sim)",
            "avatar_url": None,
            "type": "bot",
            "bot": {
                "owner": {"type": "workspace", "workspace": True},
                "workspace_name": "Simulated workspace",
            },
        }
        person: JSON = {
            "object": "user",
            "id": self.new_id(),
            "name": "Ada Operator",
            "avatar_url": None,
            "type": "person",
            "person": {"email": "ada@example.com"},
        }
        self.users: dict[str, JSON] = {u["id"]: u for u in (self.bot, person)}
        root_title = [
            {
                "type": "text",
                "text": {"content": config.root_page_title, "link": None},
                "annotations": {"bold": False, "italic": False, "strikethrough": False,
                                "underline": False, "code": False, "color": "default"},
                "plain_text": config.root_page_title,
                "href": None,
            }
        ]  # fmt: skip
        self.add_page(
            config.root_page_id,
            {"type": "workspace", "workspace": True},
            title_property(root_title),
        )
        for fault in config.faults:
            self.add_fault(fault)

    # ids and times ------------------------------------------------------------------------

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def short_id(self) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits, k=4))

    def now(self) -> str:
        moment = self.config.clock()
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def user_ref(self) -> JSON:
        return {"object": "user", "id": self.bot["id"]}

    def _stamps(self) -> JSON:
        now = self.now()
        return {
            "created_time": now,
            "last_edited_time": now,
            "created_by": self.user_ref(),
            "last_edited_by": self.user_ref(),
        }

    def touch(self, obj: JSON) -> None:
        obj["last_edited_time"] = self.now()
        obj["last_edited_by"] = self.user_ref()

    # lookups ------------------------------------------------------------------------------

    def page(self, raw_id: str, name: str = "page_id") -> JSON:
        object_id = parse_id(raw_id, name)
        if object_id not in self.pages:
            raise not_found("page", object_id)
        return self.pages[object_id]

    def database(self, raw_id: str, name: str = "database_id") -> JSON:
        object_id = parse_id(raw_id, name)
        if object_id not in self.databases:
            raise not_found("database", object_id)
        return self.databases[object_id]

    def data_source(self, raw_id: str, name: str = "data_source_id") -> JSON:
        object_id = parse_id(raw_id, name)
        if object_id not in self.data_sources:
            raise not_found("data_source", object_id)
        return self.data_sources[object_id]

    def block_parent(self, raw_id: str, name: str = "block_id") -> tuple[str, JSON]:
        """(id, object) of a page or block that can hold children."""
        object_id = parse_id(raw_id, name)
        found = self.pages.get(object_id) or self.blocks.get(object_id)
        if found is None:
            raise not_found("block", object_id)
        return object_id, found

    # building -----------------------------------------------------------------------------

    def add_page(self, page_id: str, parent: JSON, properties: dict[str, JSON]) -> JSON:
        title = next(
            (plain_text(p["title"]) for p in properties.values() if p["type"] == "title"), ""
        )
        slug = "-".join([*title.split()[:6], page_id.replace("-", "")])
        page: JSON = {
            "object": "page",
            "id": page_id,
            **self._stamps(),
            "cover": None,
            "icon": None,
            "parent": parent,
            "in_trash": False,
            "is_archived": False,
            "is_locked": False,
            "properties": properties,
            "url": f"https://app.notion.com/p/{slug}",
            "public_url": None,
            "archived": False,
        }
        self.pages[page_id] = page
        if parent.get("type") == "page_id":
            self.add_block(parent["page_id"], "child_page", {"title": title}, block_id=page_id)
        return page

    def add_block(
        self, parent_id: str, kind: str, content: JSON, block_id: str | None = None
    ) -> JSON:
        parent_kind = "page_id" if parent_id in self.pages else "block_id"
        block: JSON = {
            "object": "block",
            "id": block_id or self.new_id(),
            "parent": {"type": parent_kind, parent_kind: parent_id},
            **self._stamps(),
            "has_children": False,
            "in_trash": False,
            "type": kind,
            kind: content,
            "archived": False,
        }
        self.blocks[block["id"]] = block
        self.children.setdefault(parent_id, []).append(block["id"])
        if parent_id in self.blocks:
            self.blocks[parent_id]["has_children"] = True
        return block

    def database_view(self, database: JSON) -> JSON:
        names = [
            {"id": ds_id, "name": plain_text(self.data_sources[ds_id]["title"])}
            for ds_id in database["_data_source_ids"]
        ]
        view = {k: v for k, v in database.items() if not k.startswith("_")}
        return view | {"data_sources": names}

    def page_title(self, page: JSON) -> str:
        return next(
            (plain_text(p["title"]) for p in page["properties"].values() if p["type"] == "title"),
            "",
        )

    # faults -------------------------------------------------------------------------------

    def add_fault(self, fault: NotionFault) -> ActiveFault:
        active = ActiveFault(self.next_fault_id, fault)
        if fault.kind == "outage":
            active.until = self.config.clock().timestamp() + fault.seconds
        self.next_fault_id += 1
        self.faults.append(active)
        return active

    def in_outage(self) -> bool:
        now = self.config.clock().timestamp()
        return any(f.until is not None and now < f.until for f in self.faults)

    def matching_faults(self, method: str, path: str) -> list[ActiveFault]:
        return [
            f
            for f in self.faults
            if f.fault.kind != "outage" and not f.exhausted and f.fault.matches(method, path)
        ]


def outage_error() -> NotionError:
    return NotionError(503, "service_unavailable", "Notion is unavailable, please try again later.")


def check_type(value: Any, expected: type, where: str) -> Any:
    if not isinstance(value, expected):
        raise validation_error(f"body failed validation: {where} should be an {expected.__name__}.")
    return value
