"""The API is discoverable: docs/api.md lists every route the daemon has (a test keeps them
in step), and the interactive docs at /api/docs work without internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from starlette.routing import Mount, Route

from ledger.config import Settings
from ledger.web.app import create_app
from ledger.web.ingest_routes import TRACES_PATHS
from tests.servers import app_client

REPO = Path(__file__).resolve().parents[2]
API_DOC = REPO / "docs" / "api.md"
HEADING = re.compile(r"^### (GET|POST|PUT|PATCH|DELETE) (/\S*)$", re.MULTILINE)


def _registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the app: those in its OpenAPI document, those kept out
    of it, static mounts (as ``{file}``) and the traces route answered at the front door."""
    app = create_app(Settings(database_url="sqlite://", behaviors_dir=Path("behaviors")))
    routes = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    pending = list(app.routes)
    while pending:
        route = pending.pop()
        # FastAPI >= 0.120 wraps an included router (its routes keep their full paths).
        included = getattr(route, "original_router", None)
        if included is not None:
            pending.extend(included.routes)
        elif isinstance(route, Mount):
            routes.add(("GET", route.path + "/{file}"))
        elif isinstance(route, Route):
            routes |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    assert "/v1/traces" in TRACES_PATHS
    routes.add(("POST", "/v1/traces"))
    return routes


def test_api_docs_list_every_route_the_daemon_registers_and_no_other() -> None:
    documented = set(HEADING.findall(API_DOC.read_text(encoding="utf-8")))
    registered = _registered_routes()
    assert ("GET", "/api/behaviors") in registered  # the walk found the included routers
    assert registered - documented == set(), "routes missing from docs/api.md"
    assert documented - registered == set(), "docs/api.md lists routes the daemon lacks"


def test_every_documented_route_has_a_curl_example() -> None:
    text = API_DOC.read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    for section in sections:
        assert "\ncurl " in section, section.splitlines()[0]


def test_readme_links_the_api_docs() -> None:
    assert "(docs/api.md)" in (REPO / "README.md").read_text(encoding="utf-8")


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


async def test_docs_page_loads_only_assets_the_daemon_serves(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'docs.db'}",
        behaviors_dir=tmp_path / "behaviors",
        watch=False,
    )
    async with app_client(settings) as daemon:
        page = await daemon.get("/api/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text  # no CDN, no Google font
        parser = _Assets()
        parser.feed(page.text)
        assert sorted(parser.urls) == [
            "/api/docs/static/favicon.png",
            "/api/docs/static/swagger-ui-bundle.js",
            "/api/docs/static/swagger-ui.css",
        ]
        expected_type = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        for url in parser.urls:
            asset = await daemon.get(url)
            assert asset.status_code == 200, url
            assert asset.headers["content-type"].split(";")[0] == expected_type[Path(url).suffix]
            assert len(asset.content) > 1000
        bundle = (await daemon.get("/api/docs/static/swagger-ui-bundle.js")).text
        assert "SwaggerUIBundle" in bundle
        # The page's script fetches the OpenAPI document from the daemon too, and it declares the
        # bearer token the /api routes need, so "Authorize" can send it.
        assert "url: '/openapi.json'" in page.text
        spec = (await daemon.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert spec["paths"]["/api/behaviors"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]
