"""Issue 15 item 3: shard CRLs (a leaf's CDP names one of N, fixed for its life, an IDP in
each) and delta CRLs (Delta CRL Indicator, Freshest CRL), checked by openssl and pkilint, on
SQLite and PostgreSQL, in process and through a real gunicorn."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from ca_service.config import Settings, load_settings
from ca_service.core.facade import Core
from ca_service.domain import RevocationReason
from ca_service.errors import ConfigError, NotFound
from ca_service.storage import migrate
from ca_service.storage.db import unit_of_work
from ca_service.storage.models import CertificateRow
from ca_service.wiring import build_authority

from ..conftest import ADMIN, database, make_settings, new_ca, run, table_names
from ..helpers import chain_files, count_rows, lint_cert, lint_crl, write
from ..live import (
    LiveServer,
    assert_problem,
    crl_number,
    fetch_crl,
    issue,
    revoke,
    server_tracebacks,
    start_server,
)

SHARDS = 4


def _settings(tmp_path: Path, db_url: str, **changes: object) -> Settings:
    return make_settings(tmp_path, db_url, **changes)


@pytest.fixture
def sharded(tmp_path: Path, db_url: str) -> Iterator[Core]:
    ca = new_ca(_settings(tmp_path, db_url, crl_shards=SHARDS))
    yield ca
    ca.db.dispose()


@pytest.fixture
def deltas(tmp_path: Path, db_url: str) -> Iterator[Core]:
    ca = new_ca(_settings(tmp_path, db_url, crl_shards=SHARDS, crl_deltas=True))
    yield ca
    ca.db.dispose()


def _issue(ca: Core, name: str) -> tuple[str, x509.Certificate]:
    issued = ca.issue_with_new_key(ADMIN, common_name=name, names=[name])
    return issued.record.serial, x509.load_pem_x509_certificate(issued.certificate_pem.encode())


def _cdp(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    (point,) = points
    assert point.full_name is not None
    (name,) = point.full_name
    return str(name.value)


def _freshest(cert_or_crl: x509.Certificate | x509.CertificateRevocationList) -> str:
    value = cert_or_crl.extensions.get_extension_for_class(x509.FreshestCRL).value
    (point,) = value
    assert point.full_name is not None
    return str(point.full_name[0].value)


def _part(ca: Core, part: str) -> x509.CertificateRevocationList:
    crl = ca.current_crl("default", part=part)
    assert crl is not None
    return x509.load_der_x509_crl(crl.der)


def _number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def _pem(path: Path, crl: x509.CertificateRevocationList) -> Path:
    return write(path, crl.public_bytes(serialization.Encoding.PEM))


def _cert_pem(path: Path, cert: x509.Certificate) -> Path:
    return write(path, cert.public_bytes(serialization.Encoding.PEM))


def _verify(openssl: str, tmp_path: Path, ca: Core, leaf: Path, *crls: Path) -> tuple[int, str]:
    """openssl verify with CRL checks of the leaf only (the intermediate's status is the
    root's CRL, not under test here)."""
    root, inter = chain_files(ca, tmp_path)
    cmd = [openssl, "verify", "-crl_check", "-use_deltas", "-CAfile", str(root)]
    cmd += ["-untrusted", str(inter)]
    for crl in crls:
        cmd += ["-CRLfile", str(crl)]
    result = run([*cmd, str(leaf)])
    return result.returncode, result.stdout + result.stderr


def _shard(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


def test_cdp_names_the_stored_shard_and_never_moves(
    sharded: Core, tmp_path: Path, db_url: str
) -> None:
    base = sharded.settings.certificate_url
    placed: dict[str, int] = {}
    for i in range(12):
        serial, cert = _issue(sharded, f"s{i}.example.test")
        url = _cdp(cert)
        assert url.startswith(f"{base}/ca/default/crl/")
        k = _shard(url)
        assert k == int(serial, 16) % SHARDS + 1
        placed[serial] = k
        assert lint_cert(_cert_pem(tmp_path / f"s{i}.pem", cert)) == ""
    assert len(set(placed.values())) > 1  # 12 random serials in one shard: 4**-11
    # The shard count changes: stored certificates keep theirs, the CRLs follow the store.
    sharded.db.dispose()
    resized = new_ca_reopened(tmp_path, db_url, crl_shards=7)
    serial, cert = _issue(resized, "later.example.test")
    assert _shard(_cdp(cert)) == int(serial, 16) % 7 + 1
    with unit_of_work(resized.db) as s:
        stored = dict(s.execute(select(CertificateRow.serial, CertificateRow.crl_shard)).all())
    for old_serial, k in placed.items():
        assert stored[old_serial] == k
    victim = next(iter(placed))
    resized.revoke(victim, RevocationReason.KEY_COMPROMISE, ADMIN)
    shard_crl = _part(resized, str(placed[victim]))
    assert shard_crl.get_revoked_certificate_by_serial_number(int(victim, 16)) is not None
    resized.db.dispose()


def new_ca_reopened(tmp_path: Path, db_url: str, **changes: object) -> Core:
    """The same store and keys opened again with other settings (a restart)."""
    ca = build_authority(_settings(tmp_path, db_url, **changes), apply_migrations=True)
    ca.load_keys()
    return ca


def test_revoked_is_on_its_shard_only_and_on_the_full_crl(
    sharded: Core, tmp_path: Path, openssl: str
) -> None:
    issued = [_issue(sharded, f"r{i}.example.test") for i in range(2)]
    victim, victim_cert = issued[0]
    _, good_cert = issued[1]
    sharded.revoke(victim, RevocationReason.KEY_COMPROMISE, ADMIN)
    k = _shard(_cdp(victim_cert))
    for shard in range(1, SHARDS + 1):
        crl = _part(sharded, str(shard))
        listed = crl.get_revoked_certificate_by_serial_number(int(victim, 16)) is not None
        assert listed == (shard == k), shard
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical
        assert idp.value.only_contains_user_certs
        assert idp.value.full_name is not None
        assert (
            str(idp.value.full_name[0].value)
            == f"{sharded.settings.certificate_url}/ca/default/crl/{shard}"
        )
        path = _pem(tmp_path / f"shard{shard}.pem", crl)
        assert lint_crl(path) == "", shard
    full = x509.load_der_x509_crl(sharded.current_crl("default").der)  # type: ignore[union-attr]
    assert full.get_revoked_certificate_by_serial_number(int(victim, 16)) is not None
    shard_pem = tmp_path / f"shard{k}.pem"
    code, out = _verify(
        openssl, tmp_path, sharded, _cert_pem(tmp_path / "v.pem", victim_cert), shard_pem
    )
    assert code != 0 and "certificate revoked" in out, out
    good_shard = tmp_path / f"shard{_shard(_cdp(good_cert))}.pem"
    code, out = _verify(
        openssl, tmp_path, sharded, _cert_pem(tmp_path / "g.pem", good_cert), good_shard
    )
    assert code == 0, out
    # A shard CRL whose IDP is not the certificate's CDP is not accepted for it.
    other = next(s for s in range(1, SHARDS + 1) if s != _shard(_cdp(good_cert)))
    code, out = _verify(
        openssl, tmp_path, sharded, tmp_path / "g.pem", tmp_path / f"shard{other}.pem"
    )
    assert code != 0, out


def test_shard_numbers_share_the_authority_sequence(sharded: Core) -> None:
    first = _number(_part(sharded, "1"))
    full = sharded.generate_crl("default").number
    second = _number(_part(sharded, "2"))
    assert first < full < second
    assert _number(_part(sharded, "1")) == first  # fresh and unchanged: not re-signed


def test_delta_lists_revocations_since_its_base(deltas: Core, tmp_path: Path, openssl: str) -> None:
    (good, good_cert), (victim, victim_cert), (held, _) = (
        _issue(deltas, f"d{i}.example.test") for i in range(3)
    )
    assert (
        _freshest(victim_cert)
        == f"{deltas.settings.certificate_url}/ca/default/crl/{_shard(_cdp(victim_cert))}/delta"
    )
    base = x509.load_der_x509_crl(deltas.current_crl("default").der)  # type: ignore[union-attr]
    assert _freshest(base) == f"{deltas.settings.certificate_url}/ca/default/crl/delta"
    deltas.revoke(held, RevocationReason.CERTIFICATE_HOLD, ADMIN)
    base = x509.load_der_x509_crl(deltas.generate_crl("default").der)  # lists the hold
    base_path = _pem(tmp_path / "base.pem", base)
    deltas.revoke(victim, RevocationReason.KEY_COMPROMISE, ADMIN)
    deltas.release_hold(held, ADMIN)
    # The complete CRL is not re-signed: the delta carries the change.
    assert _number(x509.load_der_x509_crl(deltas.current_crl("default").der)) == _number(base)  # type: ignore[union-attr]
    delta = _part(deltas, "delta")
    indicator = delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert indicator.critical and indicator.value.crl_number == _number(base)
    assert _number(delta) > _number(base)
    entry = delta.get_revoked_certificate_by_serial_number(int(victim, 16))
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        is x509.ReasonFlags.key_compromise
    )
    released = delta.get_revoked_certificate_by_serial_number(int(held, 16))
    assert released is not None
    assert (
        released.extensions.get_extension_for_class(x509.CRLReason).value.reason
        is x509.ReasonFlags.remove_from_crl
    )
    assert delta.get_revoked_certificate_by_serial_number(int(good, 16)) is None
    with pytest.raises(x509.ExtensionNotFound):
        delta.extensions.get_extension_for_class(x509.FreshestCRL)
    delta_path = _pem(tmp_path / "delta.pem", delta)
    assert lint_crl(base_path) == ""
    assert lint_crl(delta_path) == ""
    victim_path = _cert_pem(tmp_path / "victim.pem", victim_cert)
    good_path = _cert_pem(tmp_path / "good.pem", good_cert)
    # The full CRL has no IDP, so it and its delta cover every certificate, sharded or not.
    code, out = _verify(openssl, tmp_path, deltas, victim_path, base_path)
    assert code == 0, out  # the base alone predates the revocation
    code, out = _verify(openssl, tmp_path, deltas, victim_path, base_path, delta_path)
    assert code != 0 and "certificate revoked" in out, out
    code, out = _verify(openssl, tmp_path, deltas, good_path, base_path, delta_path)
    assert code == 0, out


def test_shard_delta_and_lints(deltas: Core, tmp_path: Path, openssl: str) -> None:
    serial, cert = _issue(deltas, "sd.example.test")
    k = _shard(_cdp(cert))
    shard_base = _part(deltas, str(k))
    assert _freshest(shard_base).endswith(f"/ca/default/crl/{k}/delta")
    base_path = _pem(tmp_path / "sbase.pem", shard_base)
    deltas.revoke(serial, RevocationReason.SUPERSEDED, ADMIN)
    assert _number(_part(deltas, str(k))) == _number(shard_base)  # waits for its half-life
    delta = _part(deltas, f"{k}/delta")
    assert delta.extensions.get_extension_for_class(
        x509.DeltaCRLIndicator
    ).value.crl_number == _number(shard_base)
    idp = delta.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    assert idp.full_name is not None and str(idp.full_name[0].value) == _cdp(cert)
    assert delta.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    delta_path = _pem(tmp_path / "sdelta.pem", delta)
    assert lint_crl(base_path) == "" and lint_crl(delta_path) == ""
    assert lint_cert(_cert_pem(tmp_path / "sd.pem", cert)) == ""
    code, out = _verify(openssl, tmp_path, deltas, tmp_path / "sd.pem", base_path)
    assert code == 0, out  # the base alone predates the revocation
    code, out = _verify(openssl, tmp_path, deltas, tmp_path / "sd.pem", base_path, delta_path)
    assert code != 0 and "certificate revoked" in out, out


def test_unknown_parts_are_not_found(sharded: Core) -> None:
    with pytest.raises(NotFound):
        sharded.current_crl("default", part="delta")  # crl_deltas off
    with pytest.raises(NotFound):
        sharded.current_crl("default", part=str(SHARDS + 1))  # no certificate names it
    for bad in ("0", "x", "1/2", "4097"):
        with pytest.raises(NotFound):
            sharded.current_crl("default", part=bad)


def test_off_by_default_nothing_changes(ca: Core) -> None:
    """Off (the default): the CDP is today's, no Freshest CRL, the full CRL has no extras."""
    _, cert = _issue(ca, "plain.example.test")
    assert _cdp(cert) == f"{ca.settings.certificate_url}/ca/default/crl"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.FreshestCRL)
    full = x509.load_der_x509_crl(ca.generate_crl("default").der)
    assert [e.oid for e in full.extensions] == [
        x509.AuthorityKeyIdentifier.oid,
        x509.CRLNumber.oid,
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "crl_shards must be between 0 and 4096"),
        ("9999", "crl_shards must be between 0 and 4096"),
        ("two", "crl_shards must be an integer"),
    ],
)
def test_bad_shard_setting_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("CA_CRL_SHARDS", value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == message


def test_bad_delta_setting_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_CRL_DELTAS", "sometimes")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert str(raised.value) == "crl_deltas must be true or false"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_parts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A real `ca-service serve` (gunicorn, 2 workers) with shards and deltas on."""
    base = tmp_path_factory.mktemp(f"live-parts-{request.param}")
    with database(request.param, base) as url:
        env = {"CA_CRL_SHARDS": str(SHARDS), "CA_CRL_DELTAS": "true"}
        server = start_server(base / "data", url, workers=2, extra_env=env)
        try:
            yield server
        finally:
            server.stop()


def test_live_shard_and_delta_crls_through_gunicorn(
    live_parts: LiveServer, tmp_path: Path, openssl: str
) -> None:
    live = live_parts
    chain = live.request("GET", "/ca.pem").body.decode()
    certs = x509.load_pem_x509_certificates(chain.encode())
    root = _cert_pem(tmp_path / "root.pem", certs[-1])
    inter = _cert_pem(tmp_path / "inter.pem", certs[0])
    good, victim = (issue(live, common_name=f"live{i}.example.test").json for i in range(2))
    victim_cert = x509.load_pem_x509_certificate(victim["certificate"].encode())
    url = _cdp(victim_cert)
    path = url.removeprefix(f"http://127.0.0.1:{live.port}")
    assert path == f"/ca/default/crl/{int(victim['serial'], 16) % SHARDS + 1}"
    assert _freshest(victim_cert) == f"{url}/delta"
    shard_base = fetch_crl(live, path)  # headers, pkilint
    revoke(live, victim["serial"])
    delta = fetch_crl(live, f"{path}/delta")
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == (
        crl_number(shard_base)
    )
    assert delta.get_revoked_certificate_by_serial_number(int(victim["serial"], 16)) is not None
    full_delta = fetch_crl(live, "/ca/default/crl/delta")
    assert full_delta.get_revoked_certificate_by_serial_number(int(victim["serial"], 16))
    # Served from the store by either worker: the ETag names the number, and 304 follows it.
    reply = live.request("GET", f"{path}/delta")
    again = live.request("GET", f"{path}/delta", headers={"If-None-Match": reply.headers["etag"]})
    assert again.status == 304
    base_pem = _pem(tmp_path / "base.pem", shard_base)
    delta_pem = _pem(tmp_path / "delta.pem", delta)
    cmd = [openssl, "verify", "-crl_check", "-use_deltas", "-CAfile", str(root)]
    cmd += ["-untrusted", str(inter), "-CRLfile", str(base_pem), "-CRLfile", str(delta_pem)]
    victim_pem = write(tmp_path / "victim.pem", victim["certificate"])
    result = run([*cmd, str(victim_pem)])
    assert result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr
    good_cert = x509.load_pem_x509_certificate(good["certificate"].encode())
    if _cdp(good_cert) == url:  # the good one may sit on another shard: its own CRLs then
        good_pem = write(tmp_path / "good.pem", good["certificate"])
        result = run([*cmd, str(good_pem)])
        assert result.returncode == 0, result.stdout + result.stderr
    for missing in ("/ca/default/crl/4097", "/ca/default/crl/999/delta", "/ca/nobody/crl/1"):
        assert_problem(live.request("GET", missing), 404)
    assert server_tracebacks(live) == 0


def test_concurrent_revocations_lose_nothing_and_share_no_number(deltas: Core) -> None:
    """Three threads revoke at once, each revocation re-signing the deltas of its scopes: the
    last deltas list every revocation, and no number names two different CRLs."""
    base = deltas.current_crl("default")
    assert base is not None
    serials = [[_issue(deltas, f"c{t}-{i}.example.test")[0] for i in range(3)] for t in range(3)]
    seen: dict[int, bytes] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(mine: list[str]) -> None:
        try:
            for serial in mine:
                deltas.revoke(serial, RevocationReason.KEY_COMPROMISE, ADMIN)
                crl = deltas.current_crl("default", part="delta")
                assert crl is not None
                with lock:
                    assert seen.setdefault(crl.number, crl.der) == crl.der
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in serials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    delta = _part(deltas, "delta")
    assert delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number == (
        base.number
    )
    for serial in (s for mine in serials for s in mine):
        assert delta.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    assert _number(delta) >= max(seen)
    # Each shard's CRLs hold their own: in the shard's base (first signed after some of these
    # revocations) or in its delta, which names that base.
    for serial in (s for mine in serials for s in mine):
        k = int(serial, 16) % SHARDS + 1
        shard_base, shard_delta = _part(deltas, str(k)), _part(deltas, f"{k}/delta")
        indicator = shard_delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        assert indicator.value.crl_number == _number(shard_base)
        assert any(
            c.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
            for c in (shard_base, shard_delta)
        )


def test_0010_keeps_old_certificates_on_the_full_crl_and_downgrades(
    ca: Core, tmp_path: Path, db_url: str
) -> None:
    """A store made before sharding, then sharded: its certificates keep the full CRL; the
    migration goes down to 0009 and up again with the certificates intact."""
    old, old_cert = _issue(ca, "old.example.test")
    ca.db.dispose()
    sharded = new_ca_reopened(tmp_path, db_url, crl_shards=SHARDS)
    sharded.revoke(old, RevocationReason.KEY_COMPROMISE, ADMIN)
    assert _cdp(old_cert).endswith("/ca/default/crl")
    full = x509.load_der_x509_crl(sharded.current_crl("default").der)  # type: ignore[union-attr]
    assert full.get_revoked_certificate_by_serial_number(int(old, 16)) is not None
    for shard in range(1, SHARDS + 1):
        crl = _part(sharded, str(shard))
        assert crl.get_revoked_certificate_by_serial_number(int(old, 16)) is None
    cfg = migrate._config()
    with sharded.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    assert "crl_parts" not in table_names(db_url)
    with sharded.db.engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("certificates")}
    assert "crl_shard" not in columns and "status_crl_number" not in columns
    assert count_rows(sharded.db, "certificates") >= 3
    migrate.upgrade(sharded.db)
    assert "crl_parts" in table_names(db_url)
    sharded.db.dispose()
