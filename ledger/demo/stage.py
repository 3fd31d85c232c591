"""The demo's folder: ``ledger.toml``, the example behaviors, the secrets they reference, and
the OpenRouter simulator's presets and keys for them. Pure functions build the text; ``write``
puts it on disk. Everything here is for the demo only: the real defaults are untouched."""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Final

from ledger.schedule import MIN_INTERVAL

# Demo-speed policy thresholds, written into the demo's ledger.toml as [policy]. Demo only: the
# defaults (10 clean runs over 3 days for B, 20 approvals at 95 % and 14 clean days for C) are
# what `ledger serve` uses.
DEMO_POLICY: Final[dict[str, int | float]] = {
    "promote_b_min_clean_runs": 2,
    "promote_b_min_days": 0,
    "promote_c_min_approved": 2,
    "promote_c_clean_days": 0,
}

# The example behaviors, in the order the banner lists them (files in ledger/demo/files).
BEHAVIORS: Final = ("site-digest", "seo-audit", "release-notes", "publisher")
# Promoted to C · autonomous before the daemon starts, then demoted by a guardrail block.
TRUSTED: Final = "publisher"
PROMOTED: Final = "site-digest"  # the policy promotes it A → B
# The guardrail fault injected into the OpenRouter simulator (a 403 with moderation metadata).
GUARDRAIL_FAULT: Final = {
    "kind": "content_filter",
    "key_name": TRUSTED,
    "times": 1,
    "label": "HARASSMENT",  # a moderation label (a personal-data label is sensitive_info)
}

MIN_EVERY: Final = int(MIN_INTERVAL.total_seconds())
RECEIVER_EVENTS: Final = ("demotion", "promotion", "pause", "auth_error")

_PRESETS: Final[dict[str, dict[str, Any]]] = {
    "site-digest": {"model": "openai/gpt-4o-mini", "provider": "OpenAI"},
    "seo-audit": {"model": "anthropic/claude-haiku-4.5", "provider": "Amazon Bedrock"},
    "release-notes": {"model": "openai/gpt-4o-mini", "provider": "OpenAI"},
    "publisher": {
        "model": "meta-llama/llama-3.3-70b-instruct",
        "provider": "DeepInfra",
        "output": "New release out today: faster runs, clearer dashboards. Try it!",
    },
}


def simulator_key(name: str) -> str:
    """The fake OpenRouter key the simulator accepts for behavior ``name`` (distinct endings,
    as the simulator labels keys by their first 11 and last 3 characters)."""
    return f"sk-or-v1-demo-{name}-{BEHAVIORS.index(name):03d}"


@dataclass(frozen=True, slots=True)
class DemoSecrets:
    """The demo's secrets, fresh for every start: the dashboard/API token, the broadcast
    token, the alert signing secret and the Notion integration token."""

    token: str
    broadcast_token: str
    alert_secret: str
    notion_token: str

    @classmethod
    def generate(cls) -> DemoSecrets:
        return cls(
            token="demo-" + secrets.token_urlsafe(18),
            broadcast_token=secrets.token_urlsafe(24),
            alert_secret=secrets.token_urlsafe(32),
            notion_token="ntn_demo" + secrets.token_hex(16),
        )

    def files(self) -> dict[str, str]:
        """File name (under the secrets folder) → value: what the references point at."""
        return {
            "token": self.token,
            "broadcast-token": self.broadcast_token,
            "alert-secret": self.alert_secret,
            "notion-token": self.notion_token,
            **{f"{name}.key": simulator_key(name) for name in BEHAVIORS},
        }


@dataclass(frozen=True, slots=True)
class Urls:
    """Where the demo's servers listen (base URLs, no trailing slash)."""

    dashboard: str
    openrouter: str
    notion: str
    receiver: str

    @property
    def alert_hook(self) -> str:
        return f"{self.receiver}/alerts/hook"


def check_every(seconds: int) -> int:
    """The schedule interval, refused below the scheduler's floor. Raises ValueError."""
    if seconds < MIN_EVERY:
        raise ValueError(f"--seconds must be at least {MIN_EVERY} (the shortest schedule)")
    return seconds


def behavior_text(template: str, every: int, secrets_dir: Path) -> str:
    """A behavior file from its template: ``${every}`` is the schedule, ``${secrets}`` the
    folder holding the key files."""
    return Template(template).substitute(every=f"{every}s", secrets=str(secrets_dir))


def behavior_files(every: int, secrets_dir: Path) -> dict[str, str]:
    """File name → text of the demo's behaviors."""
    folder = resources.files("ledger") / "demo" / "files"
    return {
        f"{name}.yaml": behavior_text(
            (folder / f"{name}.yaml").read_text(encoding="utf-8"), every, secrets_dir
        )
        for name in BEHAVIORS
    }


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def ledger_toml(*, folder: Path, secrets_dir: Path, urls: Urls, port: int, log_level: str) -> str:
    """The demo's ledger.toml: its database and behaviors folder, the simulators, the alert
    receiver, demo-speed policy thresholds. Secrets are ``file:`` references."""

    def ref(name: str) -> str:
        return _toml_string(f"file:{secrets_dir / name}")

    policy = "\n".join(f"{key} = {value}" for key, value in DEMO_POLICY.items())
    events = ", ".join(_toml_string(e) for e in RECEIVER_EVENTS)
    return f"""\
# Written by `ledger demo` for this run only. Not a production configuration.
database_url = {_toml_string(f"sqlite:///{folder / 'ledger.db'}")}
behaviors_dir = {_toml_string(str(folder / "behaviors"))}
host = "127.0.0.1"
port = {port}
log_level = {_toml_string(log_level)}
public_url = {_toml_string(urls.dashboard)}
openrouter_base_url = {_toml_string(urls.openrouter)}
broadcast_tokens = {ref("broadcast-token")}
notion_token = {ref("notion-token")}
notion_base_url = {_toml_string(urls.notion)}
notion_poll_seconds = 2
allow_private_urls = true   # the alert receiver is on loopback

# DEMO-ONLY thresholds, so that promotions happen in seconds rather than days.
[policy]
{policy}

[api_tokens]
demo = {ref("token")}

[alert_channels.demo-receiver]
type = "webhook"
url = {_toml_string(urls.alert_hook)}
secret = {ref("alert-secret")}
events = [{events}]
"""


def simulator_settings(dashboard_url: str, broadcast_token: str) -> dict[str, Any]:
    """The OpenRouter simulator's configuration (``SimConfig.from_mapping``): the behaviors'
    presets and keys, and the broadcast to the daemon."""
    return {
        "seed": 11,
        "presets": _PRESETS,
        "models": {
            "meta-llama/llama-3.3-70b-instruct": {
                "input_price": 0.00000012,
                "output_price": 0.0000003,
                "provider": "DeepInfra",
            }
        },
        "keys": [
            {"key": simulator_key(name), "name": name, "limit": 1, "limit_reset": "daily"}
            for name in BEHAVIORS
        ],
        "broadcast": {
            "url": f"{dashboard_url}/v1/traces",
            "headers": {"Authorization": f"Bearer {broadcast_token}"},
        },
    }


@dataclass(frozen=True, slots=True)
class Stage:
    """The demo's folder as written."""

    folder: Path
    config: Path
    behaviors: Path
    secrets: Path
    database_url: str


def write(
    folder: Path, *, demo_secrets: DemoSecrets, urls: Urls, port: int, every: int, log_level: str
) -> Stage:
    """Write ledger.toml, the behaviors and the secret files under ``folder`` (which exists)."""
    secrets_dir = folder / "secrets"
    secrets_dir.mkdir(mode=0o700)
    for name, value in demo_secrets.files().items():
        path = secrets_dir / name
        path.touch(mode=0o600)
        path.write_text(value, encoding="utf-8")
    behaviors = folder / "behaviors"
    behaviors.mkdir()
    for name, text in behavior_files(every, secrets_dir).items():
        (behaviors / name).write_text(text, encoding="utf-8")
    config = folder / "ledger.toml"
    config.write_text(
        ledger_toml(
            folder=folder, secrets_dir=secrets_dir, urls=urls, port=port, log_level=log_level
        ),
        encoding="utf-8",
    )
    return Stage(folder, config, behaviors, secrets_dir, f"sqlite:///{folder / 'ledger.db'}")


# Variables that would win over the demo's ledger.toml in a `ledger explain --config` run.
SHADOWING: Final = ("LEDGER_DATABASE_URL", "LEDGER_POLICY")


def unset_prefix(environ: Mapping[str, str]) -> list[str]:
    """``env -u NAME …`` for the variables of ``environ`` that would send a printed command
    elsewhere than the demo's database and thresholds (empty when none is set)."""
    names = [name for name in SHADOWING if name in environ]
    return ["env", *(part for name in names for part in ("-u", name))] if names else []


def command_line(program: list[str], *args: str) -> str:
    """A shell command line: ``program`` (how ``ledger`` was started) and ``args``, quoted."""
    return " ".join(shlex.quote(part) for part in (*program, *args))
