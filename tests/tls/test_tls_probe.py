"""``ca-service probe`` and ``ca_service.tls.probe`` against real TLS servers on loopback.

The CLI runs as a subprocess with the module CA's data directory and database (SQLite, then a
PostgreSQL schema), so it reads roots and CRLs from the store as an operator's command would.
Exit codes: 0 fine, 1 problems found, 2 usage (checked in process with CliRunner), 3 no
connection.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_service.cli import cli as main_cli
from ca_service.core.facade import Core
from ca_service.domain import RevocationReason
from ca_service.tls import ProbeConnectError, format_report, probe, server_context

from ..conftest import ADMIN, PASSPHRASE, run
from .test_tls_handshake import NAME, TLSServer, crl_der, issue, make_tls_ca, root_pem, serve

CA_SERVICE = Path(sys.executable).parent / "ca-service"


@pytest.fixture(scope="module")
def probe_ca(
    tmp_path_factory: pytest.TempPathFactory, module_db_url: str
) -> Iterator[Core]:
    authority = make_tls_ca(tmp_path_factory.mktemp("probe-ca"), module_db_url)
    yield authority
    authority.db.dispose()


def cli(ca: Core, *args: str) -> tuple[int, str, str]:
    """Run ``ca-service probe ARGS`` against the CA's own store; (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    env.update(
        CA_DATA_DIR=str(ca.settings.data_dir),
        CA_DATABASE_URL=ca.settings.resolved_database_url,
        CA_KEY_PASSPHRASE=PASSPHRASE.decode(),
    )
    done = run([str(CA_SERVICE), "probe", *args], env=env)
    return done.returncode, done.stdout, done.stderr


def cli_json(ca: Core, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(ca, *args, "--json")
    assert out, err
    return code, json.loads(out)


def test_probe_api_reports_a_healthy_endpoint(probe_ca: Core) -> None:
    issued = issue(probe_ca, NAME)
    issuing = probe_ca.chain_pem()[0]
    with TLSServer(serve(issued), max_connections=1) as server:
        report = probe(
            "127.0.0.1",
            server.port,
            servername=NAME,
            trust_pem=root_pem(probe_ca),
            crls=[crl_der(probe_ca), crl_der(probe_ca, f"{issued.record.authority}-root")],
        )
    assert report.ok, report.problems
    assert report.chain_valid and report.name_matches
    assert report.revocation == "good"
    assert report.protocol == "TLSv1.3"
    assert 88 <= (report.days_left or 0) <= 90  # the server profile's 90 days
    assert [e.serial for e in report.chain] == [
        issued.record.serial.lower().lstrip("0"),
        f"{x509.load_pem_x509_certificate(issuing.encode()).serial_number:x}",
    ]
    assert report.verified_chain[-1] == report.chain[-1].issuer  # ends at the root
    assert "OK" in format_report(report).splitlines()[0]


def test_cli_passes_a_healthy_endpoint(probe_ca: Core) -> None:
    issued = issue(probe_ca, NAME)
    with TLSServer(serve(issued), max_connections=2) as server:
        target = f"127.0.0.1:{server.port}"
        code, data = cli_json(probe_ca, target, "--servername", NAME)
        human_code, human, _ = cli(probe_ca, target, "--servername", NAME)
    assert code == 0, data["problems"]
    assert data["ok"] is True and data["revocation"] == "good"
    assert data["chain_valid"] is True and data["name_matches"] is True
    assert data["cipher"].startswith("TLS_")  # a TLS 1.3 AEAD suite
    assert human_code == 0
    assert human.splitlines()[0] == f"{target} (SNI {NAME}): OK"


def test_cli_reports_a_revoked_certificate(probe_ca: Core) -> None:
    issued = issue(probe_ca, NAME)
    probe_ca.revoke(issued.record.serial, RevocationReason.KEY_COMPROMISE, ADMIN)
    with TLSServer(serve(issued), max_connections=2) as server:
        target = f"127.0.0.1:{server.port}"
        code, data = cli_json(probe_ca, target, "--servername", NAME)
        human_code, human, _ = cli(probe_ca, target, "--servername", NAME)
    assert code == 1
    assert data["ok"] is False
    assert data["chain_valid"] is True  # the path is fine; revocation is what fails it
    assert data["revocation"] == "revoked"
    assert data["revocation_reason"] == "keyCompromise"
    assert data["revoked_subject"] == f"CN={NAME}"
    assert any("revoked" in p for p in data["problems"])
    assert human_code == 1
    assert "revocation:  revoked (keyCompromise" in human


def test_cli_reports_a_name_mismatch(probe_ca: Core) -> None:
    issued = issue(probe_ca, "other.test")
    with TLSServer(serve(issued), max_connections=1) as server:
        code, data = cli_json(probe_ca, f"127.0.0.1:{server.port}", "--servername", NAME)
    assert code == 1
    assert data["name_matches"] is False and data["checked_name"] == NAME
    assert data["chain_valid"] is True and data["revocation"] == "good"
    assert data["problems"] == [f"certificate is not valid for {NAME!r}"]


def test_cli_warns_about_expiry_within_warn_days(probe_ca: Core) -> None:
    issued = issue(probe_ca, NAME, days=10)
    with TLSServer(serve(issued), max_connections=2) as server:
        target = f"127.0.0.1:{server.port}"
        default_code, default = cli_json(probe_ca, target, "--servername", NAME)
        short_code, short = cli_json(probe_ca, target, "--servername", NAME, "--warn-days", "5")
    assert default_code == 1  # 10 days left is within the default 14
    assert any("expires in" in p for p in default["problems"])
    assert default["days_left"] in (9, 10)
    assert short_code == 0, short["problems"]


def test_cli_with_ca_file_and_crl_file(probe_ca: Core, tmp_path: Path) -> None:
    issued = issue(probe_ca, NAME)
    root_file = tmp_path / "root.pem"
    root_file.write_text(root_pem(probe_ca))
    with TLSServer(serve(issued), max_connections=2) as server:
        target = f"127.0.0.1:{server.port}"
        plain_code, plain = cli_json(probe_ca, target, "--servername", NAME, "--ca", str(root_file))
        probe_ca.revoke(issued.record.serial, RevocationReason.SUPERSEDED, ADMIN)
        crl_file = tmp_path / "crl.pem"
        crl = x509.load_der_x509_crl(crl_der(probe_ca))
        crl_file.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        code, data = cli_json(
            probe_ca, target, "--servername", NAME, "--ca", str(root_file), "--crl", str(crl_file)
        )
    # With --ca and no --crl nothing is fetched: revocation is honestly "not checked".
    assert plain_code == 0
    assert plain["revocation"] == "not checked"
    assert any("revocation not checked" in n for n in plain["notes"])
    assert code == 1 and data["revocation"] == "revoked"
    assert data["revocation_reason"] == "superseded"


def test_cli_rejects_a_chain_from_another_ca(
    probe_ca: Core, tmp_path: Path
) -> None:
    stranger = make_tls_ca(tmp_path)
    try:
        issued = issue(stranger, NAME)
    finally:
        stranger.db.dispose()
    with TLSServer(serve(issued), max_connections=1) as server:
        code, data = cli_json(probe_ca, f"127.0.0.1:{server.port}", "--servername", NAME)
    assert code == 1
    assert data["chain_valid"] is False
    assert "unable to get local issuer certificate" in data["verify_error"]
    assert data["name_matches"] is True  # the name is right; trust is what is missing


def test_cli_flags_a_server_that_omits_its_intermediate(probe_ca: Core) -> None:
    issued = issue(probe_ca, NAME)
    assert issued.private_key_pem is not None
    leaf_only = server_context(issued.certificate_pem, issued.private_key_pem)
    with TLSServer(leaf_only, max_connections=1) as server:
        code, data = cli_json(probe_ca, f"127.0.0.1:{server.port}", "--servername", NAME)
    # Only roots are trust anchors, so the probe fails as a client holding just the root would.
    assert code == 1
    assert len(data["chain"]) == 1 and data["chain_valid"] is False
    assert any("only its own certificate" in n for n in data["notes"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_exit_3_when_nothing_listens(probe_ca: Core) -> None:
    port = _closed_port()
    code, out, err = cli(probe_ca, f"127.0.0.1:{port}", "--timeout", "3")
    assert code == 3
    assert "cannot connect to 127.0.0.1" in err and out == ""
    json_code, data = cli_json(probe_ca, f"127.0.0.1:{port}", "--timeout", "3")
    assert json_code == 3 and data["ok"] is False and "cannot connect" in data["error"]


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:0", "::1:443", "host:http", "[x]:1"])
def test_cli_usage_errors_exit_2(bad: str) -> None:
    # In process: a usage error is decided before any settings, store or network is touched.
    result = CliRunner().invoke(main_cli, ["probe", bad])
    assert result.exit_code == 2, result.output
    assert "HOST:PORT" in result.output or "IPv6" in result.output


def test_probe_api_raises_when_tls_fails(probe_ca: Core) -> None:
    """A listener that is not TLS: the handshake fails and no report can be made."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(ProbeConnectError, match="handshake"):
            # The listener accepts (backlog) but never answers: the bounded handshake times out.
            probe("127.0.0.1", port, trust_pem=root_pem(probe_ca), timeout=1.0)
