"""Issue 14, item 3: docker-compose.yml and the Dockerfile, checked without a Docker engine.

No engine runs on these machines, so the compose file is validated against the Compose
Specification's JSON schema (vendored here, COMPOSE-SPEC.md), and what a schema cannot say is
checked by hand: health checks on /readyz (pg_isready for the database), secrets only from files,
no root user, volumes only where state lives, the balancer's config parsed by haproxy itself, a
plain (non-editable) install in the image. test_replicas.py runs the same topology for real.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bench import cluster
from ca_service.config import load_settings

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REPLICAS = ("replica1", "replica2")
# Environment names that would carry a secret in clear (a *_FILE variable names a file instead).
SECRETISH = re.compile(r"PASS|SECRET|TOKEN|PIN|KEY", re.I)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((HERE / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_the_compose_file_is_valid_under_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    assert set(services(compose)) == {"db", *REPLICAS, "lb"}


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["replica1"].update(healthckeck={"test": ["CMD", "true"]}),
        lambda c: c["services"]["db"].update(restart=["always"]),
        lambda c: c["services"]["lb"].update(ports="127.0.0.1:8000:8000"),
        lambda c: c.update(secrets={"x": {"file": 3}}),
    ],
    ids=["misspelt key", "list for a string", "string for a list", "number for a path"],
)
def test_the_schema_refuses_a_broken_file(
    compose: dict[str, Any], validator: jsonschema.Draft7Validator, breakage: Any
) -> None:
    """The validation above can fail: the same schema refuses each of these edits."""
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert list(validator.iter_errors(broken)) != []


def test_every_service_has_a_readiness_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] == "CMD", (name, test)
        command = " ".join(test[1:])
        if name == "db":
            assert test[1] == "pg_isready", command
        else:
            assert "/readyz" in command, (name, command)
            assert "8000" in command, (name, command)
    # Whatever waits for a replica waits for it to be ready, not merely started.
    for name, service in services(compose).items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    assert "replica1" in services(compose)["replica2"]["depends_on"]


def test_secrets_come_from_files_never_from_the_environment(compose: dict[str, Any]) -> None:
    declared = compose["secrets"]
    assert all(set(s) == {"file"} for s in declared.values()), declared
    for name, service in services(compose).items():
        mounted = set(service.get("secrets", []))
        assert mounted <= set(declared), name
        for key, value in environment(service).items():
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"{name}: {key} has a password"
            if key.endswith("_FILE") or key == "PGPASSFILE":
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in mounted, (name, key)
            else:
                assert not SECRETISH.search(key), f"{name}: {key} would hold a secret in clear"
    for name in REPLICAS:
        env = environment(services(compose)[name])
        assert env["CA_KEY_PASSPHRASE_FILE"] == "/run/secrets/ca_key_passphrase"
        assert "CA_KEY_PASSPHRASE" not in env
    assert environment(services(compose)["db"])["POSTGRES_PASSWORD_FILE"].startswith(
        "/run/secrets/"
    )


def test_the_replicas_environment_is_accepted_by_the_service(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Every CA_* variable the replicas get is a setting the service knows (it refuses unknown
    ones at start), read here by the service's own loader with the secret at a local path."""
    secret = tmp_path / "ca_key_passphrase"
    secret.write_text("not-a-real-passphrase\n")
    for name in REPLICAS:
        env = environment(services(compose)[name])
        env["CA_KEY_PASSPHRASE_FILE"] = str(secret)
        settings = load_settings(env)
        assert settings.key_passphrase == b"not-a-real-passphrase"
        assert settings.resolved_database_url.startswith("postgresql+psycopg://ca@db:5432/")
        assert settings.public_url == "http://localhost:8000"


def test_no_service_runs_as_root(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        user = str(service.get("user", "root"))
        assert user.split(":")[0] not in ("root", "0", ""), (name, user)
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for name in REPLICAS:
        assert services(compose)[name]["user"] == users[-1], "compose and image name one user"


def test_volumes_only_where_state_lives(compose: dict[str, Any]) -> None:
    assert set(compose.get("volumes", {})) == {"pgdata"}
    assert services(compose)["db"]["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    for name in REPLICAS:
        assert "volumes" not in services(compose)[name], f"{name} keeps state on its node"
    # The balancer's only mount is its config, read-only: the very file the tests run.
    (mount,) = services(compose)["lb"]["volumes"]
    source, _, mode = mount.rpartition(":")
    assert mode == "ro"
    assert (REPO / source.split(":")[0]).resolve() == cluster.HAPROXY_CFG


def test_the_database_is_not_published(compose: dict[str, Any]) -> None:
    assert "ports" not in services(compose)["db"]
    assert compose["networks"]["backend"] == {"internal": True}
    assert services(compose)["db"]["networks"] == ["backend"]
    assert services(compose)["lb"]["ports"] == ["127.0.0.1:8000:8000"]


@pytest.mark.skipif(
    shutil.which("haproxy") is None and not os.environ.get("CI"), reason="haproxy is not installed"
)
def test_haproxy_accepts_the_config_with_the_compose_environment(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env = environment(services(compose)["lb"])
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(cluster.HAPROXY_CFG)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout + checked.stderr
    # And refuses a broken one: the check can fail.
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(cluster.HAPROXY_CFG.read_text().replace("balance roundrobin", "balance x"))
    refused = subprocess.run(
        ["haproxy", "-c", "-f", str(broken)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def test_the_balancer_checks_readiness_and_never_replays_a_request() -> None:
    config = "\n".join(
        line.split("#", 1)[0] for line in cluster.HAPROXY_CFG.read_text().split("\n")
    )
    assert "http-check send meth GET uri /readyz" in config
    assert "http-check expect status 200" in config
    assert re.search(r"^\s*default-server check ", config, re.M)
    # An issuance is not idempotent: only a connection that failed may be tried elsewhere.
    assert "retry-on" not in config or re.search(r"retry-on\s+conn-failure\s*$", config, re.M)
    # haproxy's own 503 (no replica ready) tells clients when to come back, as a replica does.
    assert re.search(r"^\s*http-error status 503 .*hdr Retry-After \d+", config, re.M)


def test_the_image_installs_the_package_plainly() -> None:
    """A plain ``pip install <dir>``, not editable: the image keeps no source tree to edit."""
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN")]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert len(installs) == 1, runs
    assert not re.search(r"(\s-e\s|--editable)", installs[0]), installs[0]
    (target,) = re.findall(r"pip install(?:\s+--?\S+)*\s+(/\S+)", installs[0])
    copied = re.findall(r"^COPY\s+(.+)\s+(\S+)$", dockerfile, re.M)
    assert any(dest.rstrip("/").startswith(target.rstrip("/")) for _, dest in copied), copied
    assert f"rm -rf {target}" in installs[0], "the source tree is left in the image"
