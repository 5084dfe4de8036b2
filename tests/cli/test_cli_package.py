"""Issue 10 items 7 and 8: the CLI is a package by concern with imports in one direction, and
`serve` hands its options to gunicorn without editing the environment it passes on."""

from __future__ import annotations

import ast
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ca_service
from ca_service.config import Settings

from ..conftest import drop_pg_schema, make_pg_schema, run
from ..helpers import cli_run, one_error_line
from ..live import LiveServer, start_server

PACKAGE = Path(ca_service.__file__).parent
CLI = PACKAGE / "cli"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_cli_modules_import_neither_web_nor_their_own_package() -> None:
    modules = sorted(CLI.glob("*.py"))
    assert {p.stem for p in modules} >= {
        "__init__",
        "authorities",
        "certificates",
        "tokens",
        "serve",
        "db",
        "tls",
        "output",
    }
    for path in modules:
        imported = _imports(path)
        web = sorted(m for m in imported if m.split(".")[:2] in (["ca_service", "web"],))
        assert not web, (path.name, web)
        assert not {"ca_service.wsgi", "flask"} & imported, path.name
        if path.stem != "__init__":
            # Submodules use each other, never the package that assembles them: no cycle.
            assert "ca_service.cli" not in imported, path.name
            assert not {m for m in imported if m.startswith("ca_service.cli.__init__")}


def test_nothing_below_the_cli_imports_it() -> None:
    for path in PACKAGE.rglob("*.py"):
        if CLI in path.parents:
            continue
        bad = {
            m for m in _imports(path) if m == "ca_service.cli" or m.startswith("ca_service.cli.")
        }
        assert not bad, (path.relative_to(PACKAGE), bad)


def test_importing_the_cli_loads_no_web_module() -> None:
    code = (
        "import sys, ca_service.cli\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('ca_service.web', 'flask'))"
        " or m == 'ca_service.wsgi')\n"
        "print(bad)\n"
    )
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_module_shadows_a_standard_library_module() -> None:
    shadowing = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.stem in sys.stdlib_module_names
    )
    assert shadowing == []


def test_serve_refuses_a_bad_bind_in_one_line(settings: Settings) -> None:
    result = cli_run(settings, ["serve", "--bind", "nowhere"])
    assert result.exit_code == 3
    assert one_error_line(result) == "error: bind must be HOST:PORT, not 'nowhere'"


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {key: value for key, _, value in pairs}


@pytest.fixture(params=["sqlite", "postgresql"])
def served_by_options(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    """`serve --tls --bind ... --workers 3 --timeout 45`, with none of them in the environment."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ca.db'}"
    else:
        url, schema = make_pg_schema()
    # SPT_NOENV: setproctitle (gunicorn's process titles) leaves /proc/<pid>/environ readable.
    server = start_server(
        tmp_path / "data",
        url,
        workers=3,
        tls=True,
        as_options=True,
        extra_env={"SPT_NOENV": "1"},
    )
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=40)
        if schema:
            drop_pg_schema(schema)


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs /proc")
def test_serve_options_reach_gunicorn_not_the_environment(served_by_options: LiveServer) -> None:
    server = served_by_options
    assert "CA_BIND" not in server.env and "CA_WORKERS" not in server.env
    # HTTPS on the --bind port (start_server checked /healthz over TLS against the stored root).
    assert server.base_url == f"https://127.0.0.1:{server.port}"
    assert server.request("GET", "/healthz").status == 200
    # exec: the process started is gunicorn's master, with the environment it was given.
    master = server.proc.pid
    environ = _environ(master)
    assert environ["CA_DATA_DIR"] == server.env["CA_DATA_DIR"]
    assert not {"CA_BIND", "CA_WORKERS", "CA_TIMEOUT", "CA_TLS"} & set(environ)
    for worker in _children(master):
        assert not {"CA_BIND", "CA_WORKERS", "CA_TIMEOUT", "CA_TLS"} & set(_environ(worker))
    assert len(_children(master)) == 3
    # SIGTERM: a graceful stop.
    assert server.stop() == 0
