"""External Account Binding keys (ca_service.acme.eab) on SQLite and PostgreSQL, and the sealing
of their HMAC keys at rest (ca_service.crypto.sealed).

The HMAC key is returned once, stored only sealed (the database alone cannot bind an account),
bound to its kid (a sealed value moved to another row does not open), readable only with the
CA key passphrase; a bad grant writes nothing; revocation is idempotent; a key binds once.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from ca_service.acme.eab import HMAC_KEY_BYTES, KID_RE, SEAL_INFO, EABKeys, new_hmac_key
from ca_service.core.facade import Core
from ca_service.crypto.sealed import NONCE_BYTES, VERSION, Sealer, SealError
from ca_service.domain import Actor
from ca_service.errors import BadRequest, ConfigError, NotFound
from ca_service.storage.acme import EABKeyRepository
from ca_service.storage.db import unit_of_work

from ..conftest import PASSPHRASE
from ..helpers import all_stored_bytes, count_rows

ADMIN = Actor("test:eab-admin", "req-eab-1", "127.0.0.1")


def _keys(ca: Core, passphrase: bytes = PASSPHRASE) -> EABKeys:
    return EABKeys(ca.db, ca.clock, passphrase)


def _create(ca: Core, keys: EABKeys | None = None, **overrides: Any) -> tuple[Any, str]:
    fields: dict[str, Any] = {
        "name": "web servers",
        "allowed_names": ["*.eab.example.test"],
        "profiles": None,
        "max_validity_days": None,
        "authorities": None,
        "allow_wildcards": False,
    }
    fields.update(overrides)
    return (keys or _keys(ca)).create(
        **fields,
        actor=ADMIN,
        known_profiles=ca.settings.profiles,
        known_authorities={a.name for a in ca.list_authorities()},
    )


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _events(ca: Core, action: str) -> list[Any]:
    return list(ca.catalog.audit_events(action=action, limit=500))


def _stored_sealed(ca: Core, kid: str) -> bytes:
    with unit_of_work(ca.db) as s:
        found = EABKeyRepository(s).get(kid)
    assert found is not None
    return found[1]


# ---------------------------------------------------------------------------- create, read


def test_create_returns_the_hmac_key_once_and_stores_it_only_sealed(ca: Core) -> None:
    keys = _keys(ca)
    record, hmac_b64 = _create(
        ca,
        keys,
        allowed_names=["*.eab.example.test", "10.9.0.0/16"],
        profiles=["server"],
        max_validity_days=30,
        authorities=["default"],
        allow_wildcards=True,
    )
    assert KID_RE.match(record.kid) and len(record.kid) == 26
    assert "=" not in hmac_b64 and len(hmac_b64) == 43
    key = _decode(hmac_b64)
    assert len(key) == 32
    assert record.name == "web servers"
    assert record.created_by == ADMIN.identity
    assert record.account_id is None and record.revoked_at is None
    p = record.policy
    assert p.allowed_names == ("*.eab.example.test", "10.9.0.0/16")
    assert p.profiles == ("server",) and p.max_validity_days == 30
    assert p.authorities == ("default",) and p.allow_wildcards is True

    # Read back: the same record, from list and get; the HMAC key opens only through hmac_key.
    assert keys.get(record.kid) == record
    assert [r.kid for r in keys.list()] == [record.kid]
    opened = keys.hmac_key(record.kid)
    assert opened == (record, key)

    # Nowhere in the store in clear: not the bytes, not their base64 in any form.
    stored = all_stored_bytes(ca.db)
    for form in (
        key,
        hmac_b64.encode(),
        base64.b64encode(key),
        base64.b64encode(key).rstrip(b"="),
        key.hex().encode(),
    ):
        assert form not in stored
    sealed = _stored_sealed(ca, record.kid)
    assert sealed[0] == VERSION and len(sealed) == 1 + NONCE_BYTES + 32 + 16
    assert key not in sealed

    # One audit event, with the grant and without the key.
    events = _events(ca, "acme.eab.create")
    assert len(events) == 1
    event = events[0]
    assert event.actor == ADMIN.identity and event.target == f"eab:{record.kid}"
    assert event.request_id == "req-eab-1" and event.client_address == "127.0.0.1"
    assert event.details["allowed_names"] == ["*.eab.example.test", "10.9.0.0/16"]
    assert hmac_b64 not in str(event) and key.hex() not in str(event)


def test_an_hmac_key_never_reads_as_a_flag() -> None:
    """CI run of d73aec8: a key drawn as ``-iov4...`` made certbot stop with "argument
    --eab-hmac-key: expected one argument", and so would the command ``acme eab create``
    prints. A first byte of 0xF8-0xFB encodes as ``-``; such a draw is thrown away."""
    draws = [bytes([0xF8]) + bytes(HMAC_KEY_BYTES - 1), bytes([0xFB]) * HMAC_KEY_BYTES,
             bytes([0x41]) * HMAC_KEY_BYTES]  # fmt: skip
    asked: list[int] = []

    def draw(n: int) -> bytes:
        asked.append(n)
        return draws.pop(0)

    assert base64.urlsafe_b64encode(draws[0]).startswith(b"-")
    assert new_hmac_key(draw) == bytes([0x41]) * HMAC_KEY_BYTES
    assert asked == [HMAC_KEY_BYTES] * 3


def test_two_keys_differ_and_list_oldest_first(ca: Core) -> None:
    keys = _keys(ca)
    first, first_key = _create(ca, keys, name="first")
    second, second_key = _create(ca, keys, name="second")
    assert first.kid != second.kid and first_key != second_key
    # Each sealed with its own nonce.
    assert _stored_sealed(ca, first.kid)[1:13] != _stored_sealed(ca, second.kid)[1:13]
    listed = keys.list()
    assert {r.kid for r in listed} == {first.kid, second.kid}
    assert listed[0].created_at <= listed[1].created_at


def test_unknown_and_malformed_kids(ca: Core) -> None:
    keys = _keys(ca)
    _create(ca, keys)
    for kid in ("eab_" + "A" * 22, "eab_short", "x" * 300, "", "eab_' OR 1=1 --aaaaaaaaa"):
        with pytest.raises(NotFound):
            keys.get(kid)
        with pytest.raises(NotFound):
            keys.revoke(kid, ADMIN)
        assert keys.hmac_key(kid) is None
    assert _events(ca, "acme.eab.revoke") == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": " " + "x" * 128}, "name"),  # too long as sent, even if not once stripped
        ({"name": "bell\x07"}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"allowed_names": []}, "allowed name"),
        ({"allowed_names": ["bad pattern!"]}, "bad pattern"),
        ({"allowed_names": ["*"]}, ""),
        ({"profiles": ["no-such-profile"]}, "unknown profile"),
        ({"authorities": ["no-such-ca"]}, "unknown authority"),
        ({"max_validity_days": 0}, "max_validity_days"),
        ({"max_validity_days": -5}, "max_validity_days"),
        ({"max_validity_days": True}, "max_validity_days"),
    ],
)
def test_a_bad_grant_is_refused_and_writes_nothing(
    ca: Core, overrides: dict[str, Any], message: str
) -> None:
    audit_before = count_rows(ca.db, "audit_events")
    with pytest.raises(BadRequest) as refused:
        _create(ca, **overrides)
    assert message in refused.value.detail
    assert count_rows(ca.db, "acme_eab_keys") == 0
    assert count_rows(ca.db, "audit_events") == audit_before


def test_a_name_of_128_characters_is_accepted(ca: Core) -> None:
    record, _ = _create(ca, name="n" * 128)
    assert record.name == "n" * 128
    padded, _ = _create(ca, name="  padded ")
    assert padded.name == "padded"


# ---------------------------------------------------------------------------- sealing


def test_sealing_round_trip_and_what_does_not_open() -> None:
    sealer = Sealer(b"passphrase one", SEAL_INFO)
    secret = b"\x00\x01 a small secret \xff"
    sealed = sealer.seal(secret, b"eab_context")
    assert sealed[0] == VERSION and secret not in sealed
    assert sealer.open(sealed, b"eab_context") == secret
    # A fresh nonce each time: the same secret never seals to the same bytes.
    again = sealer.seal(secret, b"eab_context")
    assert again != sealed and sealer.open(again, b"eab_context") == secret
    # Another instance with the same passphrase and purpose opens it (the key is derived).
    assert Sealer(b"passphrase one", SEAL_INFO).open(sealed, b"eab_context") == secret

    refused = [
        (sealer, sealed, b"eab_other"),  # another row
        (Sealer(b"passphrase two", SEAL_INFO), sealed, b"eab_context"),  # another passphrase
        (Sealer(b"passphrase one", b"another purpose v1"), sealed, b"eab_context"),
        (sealer, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"eab_context"),  # altered tag
        (sealer, sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:], b"eab_context"),
        (sealer, bytes([2]) + sealed[1:], b"eab_context"),  # unknown version
        (sealer, sealed[:28], b"eab_context"),  # truncated
        (sealer, b"", b"eab_context"),
    ]
    for who, value, context in refused:
        with pytest.raises(SealError):
            who.open(value, context)


def test_no_passphrase_seals_nothing() -> None:
    with pytest.raises(ConfigError):
        Sealer(b"", SEAL_INFO).seal(b"secret", b"kid")


def test_a_sealed_value_moved_to_another_kid_does_not_open(ca: Core) -> None:
    keys = _keys(ca)
    victim, victim_key = _create(ca, keys, name="victim", allowed_names=["*.bank.example.test"])
    mine, _ = _create(ca, keys, name="mine", allowed_names=["mine.example.test"])
    # Someone who can write the database copies the victim's sealed HMAC key into their row,
    # hoping to bind with a key they know (the victim's) under a kid whose policy they chose.
    engine = sa.create_engine(ca.settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            updated = conn.execute(
                sa.text("UPDATE acme_eab_keys SET hmac_key_encrypted = :v WHERE kid = :kid"),
                {"v": _stored_sealed(ca, victim.kid), "kid": mine.kid},
            ).rowcount
        assert updated == 1
    finally:
        engine.dispose()
    with pytest.raises(ConfigError) as refused:
        keys.hmac_key(mine.kid)
    assert mine.kid in refused.value.detail
    assert victim_key not in refused.value.detail
    found = keys.hmac_key(victim.kid)
    assert found is not None and found[1] == _decode(victim_key)


def test_the_wrong_passphrase_does_not_open_but_lists(ca: Core) -> None:
    record, _ = _create(ca)
    other = _keys(ca, b"not the passphrase")
    with pytest.raises(ConfigError):
        other.hmac_key(record.kid)
    # Listing and revoking open nothing: they need no passphrase at all.
    no_passphrase = _keys(ca, b"")
    assert [r.kid for r in no_passphrase.list()] == [record.kid]
    assert no_passphrase.revoke(record.kid, ADMIN).revoked_at is not None


# ---------------------------------------------------------------------------- revoke, bind


def test_revoke_is_idempotent(ca: Core) -> None:
    keys = _keys(ca)
    record, _ = _create(ca, keys)
    other, _ = _create(ca, keys, name="untouched")
    revoked = keys.revoke(record.kid, ADMIN)
    assert revoked.kid == record.kid and revoked.revoked_at is not None
    assert abs(revoked.revoked_at - ca.clock.now()) < dt.timedelta(minutes=5)
    again = keys.revoke(record.kid, ADMIN)
    assert again == revoked
    assert keys.get(record.kid).revoked_at == revoked.revoked_at
    assert keys.get(other.kid).revoked_at is None
    events = _events(ca, "acme.eab.revoke")
    assert [e.target for e in events] == [f"eab:{record.kid}"]
    # A revoked key still opens (newAccount refuses it by its revoked_at, with a clear error).
    found = keys.hmac_key(record.kid)
    assert found is not None and found[0].revoked_at is not None


def test_a_key_binds_one_account_once_and_a_revoked_key_binds_none(ca: Core) -> None:
    keys = _keys(ca)
    record, _ = _create(ca, keys)
    revoked, _ = _create(ca, keys, name="revoked")
    keys.revoke(revoked.kid, ADMIN)
    with unit_of_work(ca.db, write=True) as s:
        assert EABKeyRepository(s).bind(record.kid, "acct-1") is True
    with unit_of_work(ca.db, write=True) as s:
        assert EABKeyRepository(s).bind(record.kid, "acct-2") is False
        assert EABKeyRepository(s).bind(revoked.kid, "acct-3") is False
    assert keys.get(record.kid).account_id == "acct-1"
    assert keys.get(revoked.kid).account_id is None
    assert {r.kid: r.account_id for r in keys.list()} == {record.kid: "acct-1", revoked.kid: None}
    # Revoking a bound key keeps the binding on record.
    assert keys.revoke(record.kid, ADMIN).account_id == "acct-1"
