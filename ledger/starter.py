"""``ledger init``: a starter ledger.toml and the example behaviors, never overwriting."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ledger.errors import LedgerError

STARTER_FILES = {
    "ledger.toml": "ledger.toml",
    "behaviors/seo-audit-weekly.yaml": "seo-audit-weekly.yaml",
    "behaviors/content-digest.yaml": "content-digest.yaml",
    "behaviors/quick-digest.yaml": "quick-digest.yaml",
}


def write_starter(directory: Path) -> list[Path]:
    """Write the starter files under ``directory``. Raises LedgerError, writing nothing, if
    any of them exists already."""
    targets = {directory / rel: template for rel, template in STARTER_FILES.items()}
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise LedgerError(
            f"refusing to overwrite {', '.join(existing)}: move them away or init elsewhere"
        )
    templates = resources.files("ledger") / "templates"
    for path, template in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((templates / template).read_text(encoding="utf-8"), encoding="utf-8")
    return list(targets)
