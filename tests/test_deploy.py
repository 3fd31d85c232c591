"""deploy/ validated where this machine can (no container engine or cluster here): the compose
file against the compose-spec JSON Schema, the Kubernetes manifests against the Kubernetes API
schemas, the systemd unit with ``systemd-analyze verify``, the Dockerfile with hadolint, and the
image's exact HEALTHCHECK and CMD run from the built wheel in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.conftest import free_port
from tests.daemon import wait_until

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sysconfig.get_path("scripts"))  # where this environment installed ledger, hadolint
K8S_VERSION = "1.30.0"  # the oldest Kubernetes still supported upstream when this was written


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- compose -------------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    # check-jsonschema vendors the compose-spec schema (Apache-2.0, with its licence file).
    vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text("utf-8"))
    return schema


def test_compose_file_matches_the_compose_spec_schema() -> None:
    compose = _yaml(DEPLOY / "compose.yaml")
    jsonschema.validate(compose, _compose_schema())
    ledger, db = compose["services"]["ledger"], compose["services"]["db"]
    assert db["healthcheck"]["test"]
    assert ledger["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert ledger["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ledger["build"]["context"] / ledger["build"]["dockerfile"]).is_file()
    # Every secret is a file declared at the top level, and the settings name it by file:.
    declared = set(compose["secrets"])
    assert set(ledger["secrets"]) | set(db["secrets"]) <= declared
    references = re.findall(r"file:/run/secrets/(\w+)", json.dumps(ledger["environment"]))
    assert references and set(references) <= set(ledger["secrets"])
    assert db["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    # The second replica is there, commented, and valid once uncommented.
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    uncommented = re.sub(r"(?m)^  # (ledger-2:|  )", r"  \1", text)
    assert uncommented != text
    two = yaml.safe_load(uncommented)
    jsonschema.validate(two, _compose_schema())
    assert two["services"]["ledger-2"]["environment"] == ledger["environment"]


def test_compose_schema_rejects_what_it_should() -> None:
    """The schema check has teeth: a misspelt key fails it."""
    compose = _yaml(DEPLOY / "compose.yaml")
    compose["services"]["db"]["helthcheck"] = compose["services"]["db"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="helthcheck"):
        jsonschema.validate(compose, _compose_schema())


# -- Kubernetes ----------------------------------------------------------------------------


def _kustomize() -> list[dict[str, Any]]:
    """The base rendered the way kustomize does for the features it uses: resources, the
    behaviors ConfigMap from configMapGenerator (without the hash suffix), images, labels."""
    kust = _yaml(K8S / "kustomization.yaml")
    assert set(kust) <= {
        "apiVersion",
        "kind",
        "labels",
        "resources",
        "configMapGenerator",
        "images",
    }
    docs = [_yaml(K8S / name) for name in kust["resources"]]
    for gen in kust["configMapGenerator"]:
        data = {Path(f).name: (K8S / f).read_text(encoding="utf-8") for f in gen["files"]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
            }
        )
    (image,) = kust["images"]
    for doc in docs:
        for label in kust["labels"]:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    docs = _kustomize()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_kind = {doc["kind"]: doc for doc in docs}
    assert set(by_kind) == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2
    labels = pod["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        by_kind["Service"]["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["behaviors"]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert volumes["secrets"]["secret"]["secretName"] == "promotion-ledger-secrets"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LEDGER_BEHAVIORS_DIR"] == mounts["behaviors"]
    for value in env.values():  # every file: reference points into the secret volume
        for path in re.findall(r"file:([^\"']+)", value):
            assert path.startswith(mounts["secrets"] + "/"), path


def test_kubernetes_schema_check_has_teeth() -> None:
    deployment = _yaml(K8S / "deployment.yaml")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_example_behavior_in_the_configmap_is_valid(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    env["LEDGER_BEHAVIORS_DIR"] = str(K8S / "behaviors")
    done = subprocess.run(
        [str(BIN / "ledger"), "validate"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- systemd, Dockerfile lint --------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here"
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "promotion-ledger.service").read_text(encoding="utf-8")
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    for option in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes"):
        assert option in unit
    # verify checks that the commands exist: point them at this environment's ledger.
    copy = tmp_path / "promotion-ledger.service"
    copy.write_text(unit.replace("/opt/promotion-ledger/bin/ledger", str(BIN / "ledger")))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the image's entry command, from the wheel ---------------------------------------------


def _dockerfile() -> tuple[dict[str, str], list[str], list[str]]:
    """The runtime stage's ENV, HEALTHCHECK command and CMD, as Docker reads them."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = re.sub(r"\\\n", " ", text).splitlines()
    runtime = lines[
        next(i for i, x in enumerate(lines) if x.startswith("FROM ") and "runtime" in x) :
    ]
    env: dict[str, str] = {}
    healthcheck: list[str] = []
    cmd: list[str] = []
    for line in runtime:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, value = pair.split("=", 1)
                env[key] = value
        elif line.startswith("HEALTHCHECK "):
            healthcheck = json.loads(line[line.index(" CMD ") + 5 :])
        elif line.startswith("CMD "):
            cmd = json.loads(line[4:])
    return env, healthcheck, cmd


@pytest.mark.slow
def test_image_entry_command_runs_from_the_wheel(tmp_path: Path) -> None:
    env_lines, healthcheck, cmd = _dockerfile()
    assert cmd == ["/bin/sh", "-c", "ledger db upgrade && exec ledger serve --host 0.0.0.0"]
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "tests", "*.db*"
        ),
    )
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
    )
    (wheel,) = dist.glob("promotion_ledger-*.whl")
    venv = tmp_path / "opt-ledger"  # /opt/ledger in the image
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True)

    state, behaviors = tmp_path / "var-lib-ledger", tmp_path / "etc-ledger-behaviors"
    state.mkdir()
    shutil.copytree(K8S / "behaviors", behaviors)  # the volume mounted on the behaviors dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    for key, value in env_lines.items():
        value = value.replace("/opt/ledger", str(venv)).replace("$PATH", env["PATH"])
        value = value.replace("/var/lib/ledger", str(state))
        env[key] = value.replace("/etc/ledger/behaviors", str(behaviors))
    port = free_port()
    env["LEDGER_PORT"] = str(port)
    assert env["LEDGER_DATABASE_URL"] == f"sqlite:///{state}/ledger.db"
    # Secrets as files named by file: references, as compose.yaml and k8s/ pass them.
    secrets = tmp_path / "run-secrets"
    secrets.mkdir()
    token = "deploy-test-admin-token-0123456789"
    for name, value in {
        "database_url": env["LEDGER_DATABASE_URL"],
        "session_secret": "s" * 48,
        "admin_token": token,
    }.items():
        (secrets / name).write_text(value + "\n", encoding="utf-8")
    env["LEDGER_DATABASE_URL"] = f"file:{secrets}/database_url"
    env["LEDGER_SESSION_SECRET"] = f"file:{secrets}/session_secret"
    env["LEDGER_API_TOKENS"] = json.dumps({"admin": f"file:{secrets}/admin_token"})
    log = tmp_path / "entry.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=state, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            probe = subprocess.run(healthcheck, env=env, capture_output=True, check=False)
            return probe.returncode == 0

        wait_until(healthy, timeout=90, what="the image's HEALTHCHECK to pass")
        assert (state / "ledger.db").is_file()
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        status = httpx.get(
            f"http://127.0.0.1:{port}/api/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert status.status_code == 200, status.text
        assert [b["name"] for b in status.json()["behaviors"]] == ["seo-audit-weekly"]
        # `exec`: the shell became the daemon, so the reload signal reaches it.
        proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: "behaviors folder rescanned" in log.read_text(),
            timeout=30,
            what="the daemon to log its SIGHUP rescan",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The healthcheck fails once the daemon is gone (it is a real probe).
    assert subprocess.run(healthcheck, env=env, capture_output=True, check=False).returncode != 0
