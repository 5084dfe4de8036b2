"""``ca-service backup`` / ``restore`` (issue 14 item 6), against real servers on SQLite and
PostgreSQL.

The long test takes a backup while a bounded thread pool issues and revokes through a real
gunicorn server, restores it into a fresh data directory and database, serves that, and checks
that everything committed before the backup started is there and working (issuance, OCSP and
CRL with openssl), with CRL numbers above the original's. The others check every refusal: one
line on stderr, a non-zero exit, and a target left exactly as it was.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography import x509

from ca_service.crypto.archive import ArchiveWriter

from ..conftest import database, live_server, run, table_names
from ..live import (
    CA_SERVICE,
    LiveServer,
    crl_number,
    fetch_crl,
    issue,
    revoke,
    server_tracebacks,
    start_server,
)

THREADS = 4
REQUESTS = 160
LAUNCH_AFTER = 40  # completed requests before the backup starts


def cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CA_SERVICE, *args],
        env={k: v for k, v in env.items() if k != "CA_BIND"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def target_env(live: LiveServer, data_dir: Path, url: str) -> dict[str, str]:
    return {**live.env, "CA_DATA_DIR": str(data_dir), "CA_DATABASE_URL": url}


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert text in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def tree(path: Path) -> list[str]:
    """Every path below ``path`` with its size, to show that a refused restore changed nothing."""
    if not path.exists():
        return ["(absent)"]
    return sorted(f"{p.relative_to(path)}:{p.stat().st_size}" for p in path.rglob("*"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def source(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with live_server(request.param, tmp_path_factory.mktemp(f"bk-{request.param}")) as server:
        server.env["TEST_BACKEND"] = request.param
        yield server


@pytest.fixture(scope="module")
def small_backup(source: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of the source with a few certificates, one revoked (for the refusal tests)."""
    revoke(source, issue(source, common_name="small.example.test").json["serial"], "superseded")
    out = tmp_path_factory.mktemp("small") / "small.bak"
    result = cli(source.env, "backup", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------------------- under load


@dataclass
class Load:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (serial, certificate PEM, monotonic time its 201 arrived)
    issued: list[tuple[str, str, float]] = field(default_factory=list)
    # (serial, monotonic time its 200 arrived)
    revoked: list[tuple[str, float]] = field(default_factory=list)
    done: int = 0


def _work(live: LiveServer, load: Load, i: int) -> None:
    reply = issue(live, common_name=f"load-{i}.backup.example.test")
    serial, pem = reply.json["serial"], reply.json["certificate"]
    with load.lock:
        load.issued.append((serial, pem, time.monotonic()))
    if i % 3 == 0:
        revoke(live, serial, "keyCompromise")
        with load.lock:
            load.revoked.append((serial, time.monotonic()))
    with load.lock:
        load.done += 1


def _openssl_ocsp(live: LiveServer, tmp: Path, pem: str) -> str:
    chain = tmp / "chain.pem"
    chain.write_bytes(live.request("GET", "/ca.pem").body)
    issuer = tmp / "issuer.pem"
    issuer.write_text(chain.read_text().split("-----END CERTIFICATE-----")[0] + (
        "-----END CERTIFICATE-----\n"
    ))  # fmt: skip
    leaf = tmp / "leaf.pem"
    leaf.write_text(pem)
    checked = run(
        ["openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-CAfile", str(chain),
         "-url", f"{live.base_url}/ocsp"]
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Response verify OK" in checked.stderr, checked.stderr
    return checked.stdout


@pytest.mark.slow
def test_a_backup_under_load_restores_into_a_working_service(
    source: LiveServer, tmp_path: Path, openssl: str
) -> None:
    backend = source.env["TEST_BACKEND"]
    out = tmp_path / "load.bak"
    load = Load()
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(_work, source, load, i) for i in range(REQUESTS)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with load.lock:
                if load.done >= LAUNCH_AFTER:
                    break
            time.sleep(0.05)
        with load.lock:
            launched = time.monotonic()
            before = {s for s, _, t in load.issued if t < launched}
            revoked_before = {s for s, t in load.revoked if t < launched}
            pem_of = {s: pem for s, pem, _ in load.issued}
        assert len(before) >= LAUNCH_AFTER
        backup = subprocess.Popen(
            [CA_SERVICE, "backup", "--out", str(out)],
            env={k: v for k, v in source.env.items() if k != "CA_BIND"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The backup runs while the pool still has work: that is the point of the test.
        assert sum(not f.done() for f in futures) > 0
        stdout, stderr = backup.communicate(timeout=300)
        for f in futures:
            f.result(timeout=120)  # re-raises an assertion of a worker
    assert backup.returncode == 0, stderr
    assert "certificates" in stdout and "schema" in stdout
    assert "rows" in stderr  # progress went to stderr
    assert revoked_before, "no revocation completed before the backup started"
    data = out.read_bytes()
    assert b"PRIVATE KEY" not in data and b"BEGIN" not in data
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    last_published = crl_number(fetch_crl(source, "/crl"))

    with database(backend, tmp_path) as url:
        env = target_env(source, tmp_path / "restored", url)
        restored = cli(env, "restore", str(out))
        assert restored.returncode == 0, restored.stderr
        assert "schema is current" in restored.stdout
        live = start_server(tmp_path / "restored", url, admin_token=source.admin_token)
        try:
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:
                    rows = {
                        str(s): str(t)
                        for s, t in conn.execute(sa.text("SELECT serial, status FROM certificates"))
                    }
                    max_id = conn.execute(sa.text("SELECT max(id) FROM certificates")).scalar()
            finally:
                engine.dispose()
            assert before <= set(rows), sorted(before - set(rows))[:5]
            assert all(rows[s] == "revoked" for s in revoked_before)
            # The restored service issues; on PostgreSQL its ids continue above the restored.
            fresh = issue(live, common_name="after-restore.backup.example.test").json
            engine = sa.create_engine(url)
            try:
                with engine.connect() as conn:
                    new_id = conn.execute(
                        sa.text("SELECT id FROM certificates WHERE serial = :s"),
                        {"s": fresh["serial"]},
                    ).scalar()
            finally:
                engine.dispose()
            assert new_id is not None and max_id is not None and new_id > max_id
            # OCSP (openssl): a revocation from before the backup, and the new certificate.
            gone = sorted(revoked_before)[0]
            assert ": revoked" in _openssl_ocsp(live, tmp_path, pem_of[gone])
            assert ": good" in _openssl_ocsp(live, tmp_path, fresh["certificate"])
            # The CRL: above every number the original published, listing the revocations,
            # signed by the restored key (openssl verifies it against the chain).
            crl = fetch_crl(live, "/crl")
            assert crl_number(crl) > last_published
            listed = {format(r.serial_number, "x") for r in crl}
            assert {s.lstrip("0") for s in revoked_before} <= listed
            crl_file = tmp_path / "restored.crl"
            crl_file.write_bytes(live.request("GET", "/crl").body)
            verified = run(
                [openssl, "crl", "-inform", "DER", "-in", str(crl_file),
                 "-CAfile", str(tmp_path / "chain.pem"), "-noout"]
            )  # fmt: skip
            assert verified.returncode == 0 and "verify OK" in verified.stderr, verified.stderr
            assert server_tracebacks(live) == 0
        finally:
            live.stop()
    assert server_tracebacks(source) == 0


# ---------------------------------------------------------------------------- refusals


def test_a_tampered_truncated_or_foreign_file_is_refused_and_nothing_is_written(
    source: LiveServer, small_backup: Path, tmp_path: Path
) -> None:
    data = small_backup.read_bytes()
    cases = {
        "altered": data[: len(data) // 2]
        + bytes([data[len(data) // 2] ^ 1])
        + data[len(data) // 2 + 1 :],
        "truncated": data[:-7],
        "header": data.replace(b'"database"', b'"databasf"', 1),
        "foreign": b"-----BEGIN CERTIFICATE-----\n",
    }
    expected = {
        "altered": "damaged, truncated or was altered",
        "truncated": "the backup file is truncated",
        "header": "damaged, truncated or was altered",
        "foreign": "not a ca-service backup file",
    }
    with database(source.env["TEST_BACKEND"], tmp_path) as url:
        env = target_env(source, tmp_path / "target", url)
        for name, content in cases.items():
            bad = tmp_path / f"{name}.bak"
            bad.write_bytes(content)
            result = cli(env, "restore", str(bad))
            assert_one_line_refusal(result, expected[name])
            assert tree(tmp_path / "target") == ["(absent)"], name
            assert table_names(url) == [], name


def test_a_wrong_passphrase_or_a_missing_backup_passphrase_is_refused(
    source: LiveServer, small_backup: Path, tmp_path: Path
) -> None:
    with database(source.env["TEST_BACKEND"], tmp_path) as url:
        env = {**target_env(source, tmp_path / "target", url), "CA_KEY_PASSPHRASE": "x" * 20}
        assert_one_line_refusal(cli(env, "restore", str(small_backup)), "wrong passphrase")
        # A backup made with a separate backup passphrase names the option it needs.
        secret = tmp_path / "backup-pass.txt"
        secret.write_text("a separate backup passphrase\n")
        separate = tmp_path / "separate.bak"
        made = cli(source.env, "backup", "--out", str(separate), "--passphrase-file", str(secret))
        assert made.returncode == 0, made.stderr
        plain = target_env(source, tmp_path / "target", url)
        assert_one_line_refusal(cli(plain, "restore", str(separate)), "--passphrase-file")
        assert tree(tmp_path / "target") == ["(absent)"]
        assert table_names(url) == []
        restored = cli(plain, "restore", str(separate), "--passphrase-file", str(secret))
        assert restored.returncode == 0, restored.stderr
        listed = cli(plain, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "small.example.test" in listed.stdout


def test_a_non_empty_target_is_refused_and_left_as_it_was(
    source: LiveServer, small_backup: Path, tmp_path: Path
) -> None:
    backend = source.env["TEST_BACKEND"]
    # A data directory with something in it.
    with database(backend, tmp_path) as url:
        busy = tmp_path / "busy"
        busy.mkdir()
        (busy / "notes.txt").write_text("mine")
        result = cli(target_env(source, busy, url), "restore", str(small_backup))
        assert_one_line_refusal(result, "is not empty")
        assert tree(busy) == ["notes.txt:4"]
        assert table_names(url) == []
    # A database with a schema in it (the source's own): refused, its rows untouched.
    before = cli(source.env, "list", "--json")
    result = cli(target_env(source, tmp_path / "fresh", source.env["CA_DATABASE_URL"]),
                 "restore", str(small_backup))  # fmt: skip
    assert_one_line_refusal(result, "target database is not empty")
    assert tree(tmp_path / "fresh") == ["(absent)"]
    assert cli(source.env, "list", "--json").stdout == before.stdout


def test_a_backup_of_a_newer_schema_is_refused(source: LiveServer, tmp_path: Path) -> None:
    newer = tmp_path / "newer.bak"
    with newer.open("wb") as fh:
        writer = ArchiveWriter(
            fh,
            {"alembic_revision": "9999", "database": "sqlite", "created_at": "2030-01-01",
             "key_source": "ca-key-passphrase"},
            source.env["CA_KEY_PASSPHRASE"].encode(),
        )  # fmt: skip
        writer.write(b'{"kind":"end","tables":{},"files":0}\n')
        writer.close()
    with database(source.env["TEST_BACKEND"], tmp_path) as url:
        result = cli(target_env(source, tmp_path / "target", url), "restore", str(newer))
        assert_one_line_refusal(result, "schema (9999) is newer than this installation's")
        assert tree(tmp_path / "target") == ["(absent)"]


def test_backup_never_overwrites_and_the_data_directory_holds_nothing_it_leaves_out(
    source: LiveServer, small_backup: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "exists.bak"
    existing.write_bytes(b"keep me")
    assert_one_line_refusal(cli(source.env, "backup", "--out", str(existing)), "exists already")
    assert existing.read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ca-backup-")]
    # Every file of a running server's data directory is either carried by the backup or known
    # to be no state (a new kind of file there must be decided on, and this fails until it is).
    data_dir = Path(source.env["CA_DATA_DIR"])
    carried = re.compile(r"^(keys/[^/]+|tls/server\.pem)$")
    not_state = re.compile(
        r"^(ca\.db(-wal|-shm|\.writelock|\.startlock)?|crl-stamps(/.*)?|keys|tls|tls/renew\.lock)$"
    )
    unknown = [
        rel
        for p in data_dir.rglob("*")
        if not carried.match(rel := p.relative_to(data_dir).as_posix()) and not not_state.match(rel)
    ]
    assert unknown == []
    # Every key the store names as a file of the data directory is there, so it is carried
    # (keys kept in the database, "db:..." or a token, "pkcs11:...", come with the tables).
    engine = sa.create_engine(source.env["CA_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            named = list(conn.execute(sa.text("SELECT key_file FROM authorities")).scalars())
            named += conn.execute(sa.text("SELECT key_file FROM ocsp_responders")).scalars()
    finally:
        engine.dispose()
    assert len(named) >= 2
    files = [str(n) for n in named if ":" not in str(n)]
    assert all(carried.match(f"keys/{n}") and (data_dir / "keys" / n).is_file() for n in files)


def test_a_restore_continues_crl_numbers_and_the_audit_log_records_both(
    source: LiveServer, small_backup: Path, tmp_path: Path
) -> None:
    with database(source.env["TEST_BACKEND"], tmp_path) as url:
        env = target_env(source, tmp_path / "target", url)
        result = cli(env, "restore", str(small_backup), "--crl-number-gap", "10")
        assert result.returncode == 0, result.stderr
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                numbers = {
                    str(n): int(c)
                    for n, c in conn.execute(sa.text("SELECT name, crl_number FROM authorities"))
                }
                events = conn.execute(sa.text("SELECT action, target FROM audit_events")).all()
                crls = conn.execute(sa.text("SELECT count(*) FROM crls")).scalar()
        finally:
            engine.dispose()
        crl = cli(env, "crl", "--format", "der", "--out", str(tmp_path / "c.crl"))
        assert crl.returncode == 0, crl.stderr
        parsed = x509.load_der_x509_crl((tmp_path / "c.crl").read_bytes())
        assert crl_number(parsed) == numbers["default"] + 1
        assert numbers["default"] >= 11  # one at first start, one at the revocation, plus 10
        assert crls == 0  # the stored CRLs are re-signed, not served from before the backup
        assert [tuple(e) for e in events].count(("store.restore", None)) == 1
        # Its own backup event is written after its snapshot was taken (earlier ones are in it).
        assert ("store.backup", small_backup.name) not in [tuple(e) for e in events]
        assert ("store.backup", small_backup.name) in [
            (e[2], e[3]) for e in audit_log(source.env["CA_DATABASE_URL"])
        ]
        assert f"default: the next CRL is number {numbers['default'] + 1}" in result.stderr
        # name search works on the restored rows (SQLite rebuilds its FTS index from them)
        found = cli(env, "list", "--name", "small.exam", "--json")
        assert found.returncode == 0, found.stderr
        assert [c["common_name"] for c in json.loads(found.stdout)] == ["small.example.test"]
        # What restore wrote into the data directory is for the service's user alone (with keys
        # kept in the database there may be nothing but the directory itself).
        written = [
            p
            for p in [tmp_path / "target", *(tmp_path / "target").rglob("*")]
            if "crl-stamps" not in p.parts  # made by the `crl` command above, not by restore
        ]
        assert all(p.stat().st_mode & 0o077 == 0 for p in written), written


def test_a_backup_restores_into_the_other_kind_of_database(
    source: LiveServer, small_backup: Path, tmp_path: Path
) -> None:
    """Rows, not SQL: a store that outgrew one host moves from SQLite to PostgreSQL, and a
    PostgreSQL backup can be drilled into a scratch SQLite file."""
    other = "postgresql" if source.env["TEST_BACKEND"] == "sqlite" else "sqlite"
    with database(other, tmp_path) as url:
        env = target_env(source, tmp_path / "target", url)
        result = cli(env, "restore", str(small_backup))
        assert result.returncode == 0, result.stderr
        mine = {c["serial"]: c for c in json.loads(cli(env, "list", "--json").stdout)}
        theirs = {c["serial"]: c for c in json.loads(cli(source.env, "list", "--json").stdout)}
        small = [c for c in mine.values() if c["common_name"] == "small.example.test"]
        assert [c["status"] for c in small] == ["revoked"]
        # Every certificate the backup held is there, field for field (times, names, status).
        assert mine and all(theirs[serial] == record for serial, record in mine.items())
        # JSON, time and text columns cross over as values: the audit log reads back the same.
        restored, original = audit_log(url), audit_log(source.env["CA_DATABASE_URL"])
        assert restored[-1][2] == "store.restore"
        assert restored[:-1] == original[: len(restored) - 1]
        assert any(event[-1] for event in restored[:-1])  # JSON details came across


def audit_log(url: str) -> list[tuple[object, ...]]:
    """The audit events (time, actor, action, target, details) through the product's own
    column types (JSON details, UTC times)."""
    from ca_service.clock import as_utc
    from ca_service.storage.models import AuditRow

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(
                AuditRow.at, AuditRow.actor, AuditRow.action, AuditRow.target, AuditRow.details
            )
            rows = conn.execute(query.order_by(AuditRow.id)).all()
    finally:
        engine.dispose()
    return [(as_utc(r[0]), *r[1:]) for r in rows]
