"""Issue 9 item 1: ca-service works as a user installs it, not only as an editable checkout.

A wheel, a plain `pip install .` and `pipx install .` each go into a fresh virtualenv outside the
checkout, and the installed `ca-service` runs from a directory outside it too: so nothing may be
found beside the source tree (the migrations once were, and `init` stopped with "migrations not
found at .../site-packages/migrations"). Dependencies come from the package index through pip's
cache; the wheel's virtualenv is shared by the wheel and the `pip install .` test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from ..live import start_server

pytestmark = [pytest.mark.package, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PASSPHRASE = "packaging-test-passphrase"
# What a clean checkout holds that is not needed to build; caches and local state stay behind.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "ca-data",
    "out",
)


def _run(
    cmd: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> str:
    """Run ``cmd``; its output, or a failure that shows it."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{output[-4000:]}"
    return output


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no CA_* settings and nothing pointing at the checkout."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CA_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(extra)
    return env


def _outside_checkout(path: Path) -> Path:
    assert not path.resolve().is_relative_to(ROOT), f"{path} is inside the checkout {ROOT}"
    return path


@dataclass
class Install:
    """A `ca-service` executable and the interpreter of the environment it is installed in."""

    ca_service: Path
    python: Path


def _new_venv(path: Path) -> Path:
    _run([sys.executable, "-m", "venv", _outside_checkout(path)], cwd=path.parent)
    return path / "bin" / "python"


def _assert_installed_in(install: Install, prefix: Path, cwd: Path) -> None:
    """The package the command imports is the installed copy, not the checkout."""
    code = "import ca_service; print(ca_service.__file__)"
    env = _clean_env(CA_DATA_DIR=str(cwd / "probe-data"))
    where = Path(_run([install.python, "-c", code], cwd=cwd, env=env).strip().splitlines()[-1])
    assert where.resolve().is_relative_to(prefix.resolve()), where
    assert not where.resolve().is_relative_to(ROOT), where


def _cli_env(data_dir: Path) -> dict[str, str]:
    return _clean_env(CA_DATA_DIR=str(data_dir), CA_KEY_PASSPHRASE=PASSPHRASE)


def _init_upgrade_issue(install: Install, work: Path) -> None:
    """What a new user does first, on a fresh data directory (SQLite), from ``work``."""
    data = work / "data"
    env = _cli_env(data)
    _run([install.ca_service, "init"], cwd=work, env=env)
    _run([install.ca_service, "db", "upgrade"], cwd=work, env=env)
    out = work / "www"
    _run([install.ca_service, "issue", "--cn", "www.example.test", "--out", out], cwd=work, env=env)
    cert = x509.load_pem_x509_certificate((work / "www.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["www.example.test"]
    assert (work / "www.key").stat().st_mode & 0o777 == 0o600


def _copy_source(dest: Path) -> Path:
    """A copy of the source tree as a fresh clone has it, outside the checkout (each build
    writes into the tree it builds, so each gets its own)."""
    shutil.copytree(ROOT, _outside_checkout(dest), ignore=_NOT_SOURCE)
    return dest


def _installed_from(install: Install, cwd: Path) -> dict[str, Any]:
    """pip's record of what it installed ca-service from (PEP 610 direct_url.json)."""
    code = (
        "import importlib.metadata as m;"
        "print(m.distribution('ca-service').read_text('direct_url.json'))"
    )
    out = _run([install.python, "-c", code], cwd=cwd).strip().splitlines()[-1]
    record: dict[str, Any] = json.loads(out)
    return record


@dataclass
class Venv:
    install: Install
    wheel: Path


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A wheel built from the source, installed with its dependencies into a fresh venv. The
    tests reinstall ca-service itself (never its dependencies) with what each is about."""
    base = _outside_checkout(tmp_path_factory.mktemp("wheel"))
    source = _copy_source(base / "ca-service")
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source], cwd=base)
    (wheel,) = dist.glob("ca_service-*.whl")
    python = _new_venv(base / "venv")
    _run([python, "-m", "pip", "install", "-q", wheel], cwd=base)
    yield Venv(Install(base / "venv" / "bin" / "ca-service", python), wheel)


def _reinstall(venv: Venv, what: str | Path, cwd: Path) -> Install:
    pip = [venv.install.python, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps"]
    _run([*pip, what], cwd=cwd)
    return venv.install


def test_wheel_installs_and_serves_from_outside_the_checkout(venv: Venv, tmp_path: Path) -> None:
    work = _outside_checkout(tmp_path)
    install = _reinstall(venv, venv.wheel, work)
    assert _installed_from(install, work)["url"] == venv.wheel.as_uri()
    _init_upgrade_issue(install, work)
    _assert_installed_in(install, install.python.parents[1], work)

    # `serve` on a free loopback port over the same SQLite store; one issuance over HTTP.
    data = work / "data"
    server = start_server(
        data,
        f"sqlite:///{data / 'ca.db'}",
        workers=1,
        command=str(install.ca_service),
        cwd=work,
        extra_env={"CA_KEY_PASSPHRASE": PASSPHRASE, "PYTHONPATH": ""},
    )
    try:
        reply = server.request(
            "POST",
            "/api/v1/certificates",
            token=server.admin_token,
            body={"common_name": "api.example.test", "sans": ["api.example.test"]},
        )
        assert reply.status == 201, reply.body[:500]
        cert = x509.load_pem_x509_certificate(reply.json["certificate"].encode())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["api.example.test"]
        # The admin UI's templates and static files ship in the wheel (package-data).
        login = server.request("GET", "/ui/login", check_spec=False)
        assert login.status == 200 and b'<label for="token">Token</label>' in login.body
        for asset in ("/ui/static/ui.css", "/ui/static/ui.js"):
            reply = server.request("GET", asset, check_spec=False)
            assert reply.status == 200 and len(reply.body) > 200, asset
    finally:
        code = server.stop()
    assert code == 0, server.log()[-4000:]
    assert "Traceback" not in server.log()
    # gunicorn ran with the package's settings module (its access log to stdout, say), not on
    # gunicorn's defaults.
    assert '"POST /api/v1/certificates HTTP/1.1" 201' in server.log(), server.log()[-4000:]


def test_plain_pip_install_works(venv: Venv, tmp_path: Path) -> None:
    """`pip install .` (not editable) from a source tree, into the venv of the wheel (whose
    dependencies it shares)."""
    work = _outside_checkout(tmp_path)
    source = _copy_source(work / "ca-service")
    install = _reinstall(venv, ".", source)
    (work / "run").mkdir()
    record = _installed_from(install, work / "run")
    assert record["url"] == source.as_uri()
    assert not record.get("dir_info", {}).get("editable", False)
    _init_upgrade_issue(install, work / "run")
    _assert_installed_in(install, install.python.parents[1], work / "run")


def test_pipx_install_works(tmp_path: Path) -> None:
    """`pipx install .` with pipx's home and bin directory in a temporary directory."""
    work = _outside_checkout(tmp_path)
    source = _copy_source(work / "ca-service")
    tools = _new_venv(work / "tools")
    _run([tools, "-m", "pip", "install", "-q", "pipx"], cwd=work)
    env = _clean_env(PIPX_HOME=str(work / "pipx"), PIPX_BIN_DIR=str(work / "bin"))
    env.pop("PIPX_DEFAULT_PYTHON", None)
    _run([work / "tools" / "bin" / "pipx", "install", "."], cwd=source, env=env)
    python = work / "pipx" / "venvs" / "ca-service" / "bin" / "python"
    install = Install(work / "bin" / "ca-service", python)
    (work / "run").mkdir()
    _init_upgrade_issue(install, work / "run")
    _assert_installed_in(install, work / "pipx", work / "run")
