"""The ACME store (ca_service/storage/acme.py) on SQLite and the real PostgreSQL: nonces used
once, accounts unique per key, EAB keys bound once, orders paged without gaps or repeats,
authorizations reused only when they may be, and every state change a compare-and-set."""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.orm import Session

from ca_service.domain import (
    ACMEAccountRecord,
    ACMEAuthzRecord,
    ACMEChallengeRecord,
    ACMEIdentifier,
    ACMEOrderRecord,
    CallerPolicy,
    EABKeyRecord,
)
from ca_service.storage import migrate
from ca_service.storage.acme import (
    AccountRepository,
    AuthorizationRepository,
    EABKeyRepository,
    NonceRepository,
    OrderRepository,
)
from ca_service.storage.db import Database, DuplicateRow, StoreError, unit_of_work

from ..helpers import count_rows

# Microseconds on purpose: a store that drops them does not round-trip.
NOW = dt.datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
HOUR = dt.timedelta(hours=1)
DNS = ACMEIdentifier("dns", "www.example.test")


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database per test, on both backends (``db_url`` is parametrized)."""
    database = Database(db_url)
    migrate.upgrade(database)
    yield database
    database.dispose()


def new_id() -> str:
    return secrets.token_hex(8)


def account(
    authority: str = "alpha", *, thumbprint: str | None = None, **fields: Any
) -> ACMEAccountRecord:
    key = secrets.token_urlsafe(32)
    values: dict[str, Any] = {
        "id": new_id(),
        "authority": authority,
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": key},
        "thumbprint": thumbprint or secrets.token_urlsafe(32),
        "status": "valid",
        "contact": ("mailto:ops@example.test", "mailto:pager@example.test"),
        "eab_kid": None,
        "created_at": NOW,
    }
    values.update(fields)
    return ACMEAccountRecord(**values)


def add_account(db: Database, record: ACMEAccountRecord | None = None) -> ACMEAccountRecord:
    record = record or account()
    with unit_of_work(db, write=True) as s:
        AccountRepository(s).add(record)
    return record


def order(account_id: str, **fields: Any) -> ACMEOrderRecord:
    values: dict[str, Any] = {
        "id": new_id(),
        "account_id": account_id,
        "authority": "alpha",
        "status": "pending",
        "identifiers": (DNS, ACMEIdentifier("ip", "192.0.2.7")),
        "authz_ids": (new_id(), new_id()),
        "profile": "tls-server",
        "expires": NOW + 7 * 24 * HOUR,
        "created_at": NOW,
    }
    values.update(fields)
    return ACMEOrderRecord(**values)


def add_orders(db: Database, *records: ACMEOrderRecord) -> None:
    with unit_of_work(db, write=True) as s:
        repo = OrderRepository(s)
        for record in records:
            repo.add(record)


def authz(account_id: str, **fields: Any) -> ACMEAuthzRecord:
    authz_id = fields.pop("id", new_id())
    challenges = tuple(
        ACMEChallengeRecord(new_id(), authz_id, kind, secrets.token_urlsafe(32), "pending")
        for kind in ("http-01", "tls-alpn-01", "dns-01")  # offered in this order, not sorted
    )
    values: dict[str, Any] = {
        "id": authz_id,
        "account_id": account_id,
        "authority": "alpha",
        "identifier": DNS,
        "status": "pending",
        "expires": NOW + 24 * HOUR,
        "created_at": NOW,
        "challenges": challenges,
    }
    values.update(fields)
    return ACMEAuthzRecord(**values)


def add_authz(db: Database, *records: ACMEAuthzRecord) -> None:
    with unit_of_work(db, write=True) as s:
        repo = AuthorizationRepository(s)
        for record in records:
            repo.add(record)


def eab_key(**fields: Any) -> EABKeyRecord:
    values: dict[str, Any] = {
        "kid": new_id(),
        "name": "team-web",
        "policy": CallerPolicy(allowed_names=("*.example.test",), max_validity_days=90),
        "created_by": "token:admin1",
        "created_at": NOW,
    }
    values.update(fields)
    return EABKeyRecord(**values)


def get_account(db: Database, account_id: str) -> ACMEAccountRecord | None:
    with unit_of_work(db) as s:
        return AccountRepository(s).get(account_id)


def get_order(db: Database, order_id: str) -> ACMEOrderRecord:
    with unit_of_work(db) as s:
        found = OrderRepository(s).get(order_id)
    assert found is not None
    return found


def get_authz(db: Database, authz_id: str) -> ACMEAuthzRecord:
    with unit_of_work(db) as s:
        found = AuthorizationRepository(s).get(authz_id)
    assert found is not None
    return found


def all_datetimes(record: Any) -> list[dt.datetime]:
    """Every datetime inside a record, its nested records included."""
    found: list[dt.datetime] = []
    for value in dataclasses.astuple(record):
        items = value if isinstance(value, tuple) else (value,)
        found.extend(v for v in items if isinstance(v, dt.datetime))
    return found


# ---------------------------------------------------------------------------- nonces


def test_a_nonce_is_used_once(db: Database) -> None:
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).use("nonce-a", NOW + HOUR) is True
        assert NonceRepository(s).use("nonce-b", NOW + HOUR) is True
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).use("nonce-a", NOW + HOUR) is False
    # The refused replay left the transaction usable (a savepoint, not the whole unit).
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).use("nonce-b", NOW + HOUR) is False
        assert NonceRepository(s).use("nonce-c", NOW + HOUR) is True
    assert count_rows(db, "acme_nonces") == 3


def test_purge_deletes_only_expired_used_nonces_and_at_most_its_limit(db: Database) -> None:
    with unit_of_work(db, write=True) as s:
        repo = NonceRepository(s)
        for i in range(7):
            assert repo.use(f"expired-{i}", NOW - i * SECOND)
        for i in range(3):
            assert repo.use(f"live-{i}", NOW + (i + 1) * SECOND)
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).purge(NOW, limit=3) == 3
    assert count_rows(db, "acme_nonces") == 7
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).purge(NOW, limit=3) == 3
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).purge(NOW, limit=3) == 1
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).purge(NOW) == 0
    with unit_of_work(db, write=True) as s:
        # The live ones are still remembered as used.
        repo = NonceRepository(s)
        assert [repo.use(f"live-{i}", NOW + HOUR) for i in range(3)] == [False] * 3


def race(db: Database, threads: int, attempt: Callable[[Session, int], bool]) -> list[bool]:
    """Run ``attempt`` from ``threads`` threads at once, each a request of its own (its own
    session and write transaction); bounded in threads and in time."""
    start = threading.Barrier(threads, timeout=30)

    def one(i: int) -> bool:
        start.wait()
        with unit_of_work(db, write=True) as s:
            return attempt(s, i)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(one, i) for i in range(threads)]
        return [f.result(timeout=60) for f in futures]


def test_concurrent_users_of_one_nonce_get_exactly_one_true(db: Database) -> None:
    threads = 8
    for round_ in range(3):
        value = f"raced-{round_}"

        def use(s: Session, _i: int, value: str = value) -> bool:
            return NonceRepository(s).use(value, NOW + HOUR)

        results = race(db, threads, use)
        assert sorted(results) == [False] * (threads - 1) + [True], round_
    assert count_rows(db, "acme_nonces") == 3


# ---------------------------------------------------------------------------- accounts


def test_account_round_trips_by_id_and_by_thumbprint(db: Database) -> None:
    record = add_account(db, account(eab_kid="kid-1"))
    bare = add_account(db, account(contact=()))
    with unit_of_work(db) as s:
        repo = AccountRepository(s)
        assert repo.get(record.id) == record
        assert repo.get(bare.id) == bare
        assert repo.by_thumbprint("alpha", record.thumbprint) == record
        assert repo.by_thumbprint("beta", record.thumbprint) is None
        assert repo.by_thumbprint("alpha", "no-such-thumbprint") is None
        assert repo.get("no-such-account") is None


def test_one_account_per_key_and_authority(db: Database) -> None:
    first = add_account(db)
    with pytest.raises(DuplicateRow), unit_of_work(db, write=True) as s:
        AccountRepository(s).add(account(thumbprint=first.thumbprint))
    # The same key under another authority is another account.
    other = add_account(db, account("beta", thumbprint=first.thumbprint))
    assert count_rows(db, "acme_accounts") == 2
    with unit_of_work(db) as s:
        assert AccountRepository(s).by_thumbprint("alpha", first.thumbprint) == first
        assert AccountRepository(s).by_thumbprint("beta", first.thumbprint) == other


def test_account_update_is_a_compare_and_set_on_its_status(db: Database) -> None:
    record = add_account(db)
    with unit_of_work(db, write=True) as s:
        assert AccountRepository(s).update(record.id, contact=("mailto:new@example.test",))
    updated = dataclasses.replace(record, contact=("mailto:new@example.test",))
    assert get_account(db, record.id) == updated
    with unit_of_work(db, write=True) as s:
        assert AccountRepository(s).update(record.id, contact=())
    assert get_account(db, record.id) == dataclasses.replace(record, contact=())
    with unit_of_work(db, write=True) as s:
        assert AccountRepository(s).update(record.id, status="deactivated")
    deactivated = dataclasses.replace(record, contact=(), status="deactivated")
    assert get_account(db, record.id) == deactivated
    # A deactivated account changes no more: not its contact, not its status, not its key.
    with unit_of_work(db, write=True) as s:
        repo = AccountRepository(s)
        assert repo.update(record.id, contact=("mailto:late@example.test",)) is False
        assert repo.update(record.id, status="revoked") is False
        assert repo.update(record.id, jwk={"kty": "OKP"}, thumbprint="t" * 43) is False
        assert repo.update(record.id) is False  # nothing to change still checks the status
    assert get_account(db, record.id) == deactivated
    with unit_of_work(db, write=True) as s:
        repo = AccountRepository(s)
        assert repo.update("no-such-account", contact=()) is False
        assert repo.update("no-such-account") is False
        # A caller that knows the account left "valid" can still move it from where it is.
        assert repo.update(record.id, expected_status="deactivated", status="revoked") is True
    assert get_account(db, record.id) == dataclasses.replace(deactivated, status="revoked")


def test_account_key_change(db: Database) -> None:
    record = add_account(db)
    other = add_account(db)
    new_jwk = {"kty": "EC", "crv": "P-256", "x": "x" * 43, "y": "y" * 43}
    with pytest.raises(DuplicateRow), unit_of_work(db, write=True) as s:
        AccountRepository(s).update(record.id, jwk=new_jwk, thumbprint=other.thumbprint)
    assert get_account(db, record.id) == record
    with unit_of_work(db, write=True) as s:
        assert AccountRepository(s).update(record.id, jwk=new_jwk, thumbprint="n" * 43)
    rolled = dataclasses.replace(record, jwk=new_jwk, thumbprint="n" * 43)
    with unit_of_work(db) as s:
        repo = AccountRepository(s)
        assert repo.get(record.id) == rolled
        assert repo.by_thumbprint("alpha", "n" * 43) == rolled
        assert repo.by_thumbprint("alpha", record.thumbprint) is None


def test_account_key_change_needs_key_and_thumbprint_together(db: Database) -> None:
    record = add_account(db)
    with unit_of_work(db, write=True) as s:
        repo = AccountRepository(s)
        with pytest.raises(ValueError, match="together"):
            repo.update(record.id, jwk={"kty": "OKP"})
        with pytest.raises(ValueError, match="together"):
            repo.update(record.id, thumbprint="t" * 43)
    assert get_account(db, record.id) == record


# ---------------------------------------------------------------------------- EAB keys


def test_eab_keys_add_get_and_list(db: Database) -> None:
    first = eab_key(created_at=NOW - HOUR)
    second = eab_key(name="team-db", policy=CallerPolicy(), created_at=NOW)
    with unit_of_work(db, write=True) as s:
        EABKeyRepository(s).add(second, b"\x00sealed-2\xff")
        EABKeyRepository(s).add(first, b"\x00sealed-1\xff")
    with unit_of_work(db) as s:
        repo = EABKeyRepository(s)
        assert repo.get(first.kid) == (first, b"\x00sealed-1\xff")
        assert repo.get(second.kid) == (second, b"\x00sealed-2\xff")
        assert repo.get("no-such-kid") is None
        assert repo.list() == [first, second]  # oldest first


def test_an_eab_key_is_bound_once_and_never_when_revoked(db: Database) -> None:
    key, revoked = eab_key(), eab_key()
    with unit_of_work(db, write=True) as s:
        EABKeyRepository(s).add(key, b"k1")
        EABKeyRepository(s).add(revoked, b"k2")
    with unit_of_work(db, write=True) as s:
        repo = EABKeyRepository(s)
        assert repo.revoke(revoked.kid, NOW) is not None
        assert repo.bind(key.kid, "account-1") is True
    with unit_of_work(db, write=True) as s:
        repo = EABKeyRepository(s)
        assert repo.bind(key.kid, "account-2") is False
        assert repo.bind(key.kid, "account-1") is False  # bound is bound, even to the same one
        assert repo.bind(revoked.kid, "account-3") is False
        assert repo.bind("no-such-kid", "account-4") is False
    with unit_of_work(db) as s:
        repo = EABKeyRepository(s)
        assert repo.get(key.kid) == (dataclasses.replace(key, account_id="account-1"), b"k1")
        stored = repo.get(revoked.kid)
        assert stored is not None and stored[0].account_id is None


def test_concurrent_binds_of_one_eab_key_bind_it_to_one_account(db: Database) -> None:
    key = eab_key()
    with unit_of_work(db, write=True) as s:
        EABKeyRepository(s).add(key, b"k")
    results = race(db, 6, lambda s, i: EABKeyRepository(s).bind(key.kid, f"account-{i}"))
    assert results.count(True) == 1
    with unit_of_work(db) as s:
        stored = EABKeyRepository(s).get(key.kid)
    assert stored is not None and stored[0].account_id == f"account-{results.index(True)}"


def test_revoking_an_eab_key_is_idempotent(db: Database) -> None:
    key = eab_key()
    with unit_of_work(db, write=True) as s:
        EABKeyRepository(s).add(key, b"k")
    with unit_of_work(db, write=True) as s:
        assert EABKeyRepository(s).revoke(key.kid, NOW) == (
            dataclasses.replace(key, revoked_at=NOW),
            True,
        )
    with unit_of_work(db, write=True) as s:
        # The second call changes nothing: the first revocation time stays.
        assert EABKeyRepository(s).revoke(key.kid, NOW + HOUR) == (
            dataclasses.replace(key, revoked_at=NOW),
            False,
        )
        assert EABKeyRepository(s).revoke("no-such-kid", NOW) is None
    with unit_of_work(db) as s:
        assert EABKeyRepository(s).get(key.kid) == (dataclasses.replace(key, revoked_at=NOW), b"k")


def test_an_eab_record_round_trips_whole(db: Database) -> None:
    """A record added bound or revoked (an import, a restore) comes back as it went in."""
    used = eab_key(account_id="account-9", revoked_at=NOW + SECOND)
    with unit_of_work(db, write=True) as s:
        EABKeyRepository(s).add(used, b"k")
    with unit_of_work(db, write=True) as s:
        assert EABKeyRepository(s).get(used.kid) == (used, b"k")
        assert EABKeyRepository(s).bind(used.kid, "account-10") is False


# ---------------------------------------------------------------------------- orders


def test_an_order_of_no_account_is_refused(db: Database) -> None:
    with pytest.raises(StoreError), unit_of_work(db, write=True) as s:
        OrderRepository(s).add(order("no-such-account"))
    assert count_rows(db, "acme_orders") == 0


def test_concurrent_finalizers_of_one_order_move_it_once(db: Database) -> None:
    owner = add_account(db)
    record = order(owner.id, status="ready")
    add_orders(db, record)
    results = race(db, 6, lambda s, _i: OrderRepository(s).move(record.id, ["ready"], "processing"))
    assert results.count(True) == 1
    assert get_order(db, record.id).status == "processing"


def test_order_round_trips(db: Database) -> None:
    owner = add_account(db)
    full = order(
        owner.id,
        status="invalid",
        not_before=NOW,
        not_after=NOW + 90 * 24 * HOUR,
        error={"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "no"},
        certificate_serial="0a" * 20,
        replaces="0b" * 20,
    )
    bare = order(owner.id, identifiers=(ACMEIdentifier("dns", "*.example.test"),), authz_ids=())
    add_orders(db, full, bare)
    assert get_order(db, full.id) == full
    assert get_order(db, bare.id) == bare
    with unit_of_work(db) as s:
        assert OrderRepository(s).get("no-such-order") is None


def test_orders_page_newest_first_with_each_order_once(db: Database) -> None:
    owner, stranger = add_account(db), add_account(db)
    # Distinct times and runs of equal ones, inserted out of order: 23 orders, pages of 4.
    offsets = [0, 5, 5, 5, 1, 9, 9, 2, 7, 7, 7, 7, 3, 4, 6, 8, 8, 0, 0, 10, 11, 11, 5]
    mine = [order(owner.id, created_at=NOW + k * SECOND) for k in offsets]
    add_orders(db, *mine)
    add_orders(db, *(order(stranger.id, created_at=NOW + k * SECOND) for k in (0, 5, 11, 12)))
    expected = sorted(mine, key=lambda o: (o.created_at, o.id), reverse=True)
    seen: list[ACMEOrderRecord] = []
    after: str | None = None
    with unit_of_work(db) as s:
        repo = OrderRepository(s)
        for _ in range(len(mine) + 2):  # bounded: a cursor that never ends fails the test
            page = repo.for_account(owner.id, after=after, limit=4)
            assert len(page) <= 4
            if not page:
                break
            seen.extend(page)
            after = page[-1].id
        else:
            pytest.fail("paging did not end")
        assert seen == expected
        assert len({o.id for o in seen}) == len(mine)
        assert repo.for_account(owner.id, limit=100) == expected
        assert repo.for_account("no-such-account") == []


def test_orders_page_cursor_must_be_an_order_of_that_account(db: Database) -> None:
    """An unknown or foreign cursor is the end, not a restart (a client would loop forever)."""
    owner, stranger = add_account(db), add_account(db)
    add_orders(db, *(order(owner.id, created_at=NOW + k * SECOND) for k in range(3)))
    foreign = order(stranger.id, created_at=NOW + 10 * SECOND)
    add_orders(db, foreign)
    with unit_of_work(db) as s:
        repo = OrderRepository(s)
        assert repo.for_account(owner.id, after="no-such-order") == []
        assert repo.for_account(owner.id, after=foreign.id) == []


def test_orders_counted_in_a_window(db: Database) -> None:
    owner, other, idle = add_account(db), add_account(db), add_account(db)
    since = NOW - HOUR
    add_orders(
        db,
        order(owner.id, created_at=since - SECOND),  # just before the window
        order(owner.id, created_at=since),  # on its first instant: counted
        order(owner.id, created_at=NOW - 10 * SECOND),
        order(owner.id, created_at=NOW),
        order(other.id, created_at=NOW - 2 * SECOND),
    )
    with unit_of_work(db) as s:
        repo = OrderRepository(s)
        assert repo.count_since(owner.id, since) == 3
        assert repo.oldest_since(owner.id, since) == since
        assert repo.count_since(owner.id, NOW - 30 * SECOND) == 2
        assert repo.oldest_since(owner.id, NOW - 30 * SECOND) == NOW - 10 * SECOND
        assert repo.count_since(other.id, since) == 1
        assert repo.count_since(idle.id, since) == 0
        assert repo.oldest_since(idle.id, since) is None
        assert repo.count_since(owner.id, NOW + SECOND) == 0
        assert repo.oldest_since(owner.id, NOW + SECOND) is None
        oldest = repo.oldest_since(owner.id, since)
        assert oldest is not None and oldest.utcoffset() == dt.timedelta(0)


def test_order_by_certificate_and_replacing(db: Database) -> None:
    owner = add_account(db)
    old_serial, other_serial = "01" * 20, "02" * 20
    issued = order(owner.id, status="valid", certificate_serial=old_serial)
    renewal_a = order(owner.id, replaces=old_serial, created_at=NOW + SECOND)
    renewal_b = order(owner.id, replaces=old_serial, created_at=NOW + 2 * SECOND)
    unrelated = order(owner.id, replaces=other_serial)
    add_orders(db, issued, renewal_a, renewal_b, unrelated)
    with unit_of_work(db) as s:
        repo = OrderRepository(s)
        assert repo.by_certificate(old_serial) == issued
        assert repo.by_certificate(other_serial) is None
        assert sorted(repo.replacing(old_serial), key=lambda o: o.id) == sorted(
            [renewal_a, renewal_b], key=lambda o: o.id
        )
        assert repo.replacing(other_serial) == [unrelated]
        assert repo.replacing("03" * 20) == []


def test_order_move_is_a_compare_and_set(db: Database) -> None:
    owner = add_account(db)
    record, doomed = order(owner.id), order(owner.id)
    add_orders(db, record, doomed)
    with unit_of_work(db, write=True) as s:
        repo = OrderRepository(s)
        assert repo.move(record.id, {"pending"}, "ready") is True
        assert repo.move(record.id, {"pending"}, "ready") is False  # the loser of a race
        assert repo.move(record.id, {"pending", "processing"}, "valid") is False
        assert repo.move(record.id, (), "invalid") is False
        assert repo.move("no-such-order", {"pending", "ready"}, "processing") is False
    assert get_order(db, record.id) == dataclasses.replace(record, status="ready")
    with unit_of_work(db, write=True) as s:
        repo = OrderRepository(s)
        assert repo.move(record.id, ["ready"], "processing") is True
        assert repo.move(record.id, ["processing"], "valid", certificate_serial="0c" * 20)
    issued = dataclasses.replace(record, status="valid", certificate_serial="0c" * 20)
    assert get_order(db, record.id) == issued
    problem = {"type": "urn:ietf:params:acme:error:unauthorized", "detail": "authz failed"}
    with unit_of_work(db, write=True) as s:
        repo = OrderRepository(s)
        # A refused move stores nothing, not even its error.
        assert not repo.move(
            record.id, ["pending", "ready", "processing"], "invalid", error=problem
        )
        assert repo.move(doomed.id, ["pending", "ready", "processing"], "invalid", error=problem)
    assert get_order(db, record.id) == issued
    assert get_order(db, doomed.id) == dataclasses.replace(doomed, status="invalid", error=problem)


# ---------------------------------------------------------------------------- authorizations


def test_authorization_round_trips_with_its_challenges(db: Database) -> None:
    owner = add_account(db)
    record = authz(owner.id)
    ip = authz(
        owner.id, identifier=ACMEIdentifier("ip", "2001:db8::1"), status="valid", challenges=()
    )
    add_authz(db, record, ip)
    assert get_authz(db, record.id) == record
    assert get_authz(db, ip.id) == ip
    assert count_rows(db, "acme_challenges") == 3
    with unit_of_work(db) as s:
        repo = AuthorizationRepository(s)
        assert repo.get("no-such-authz") is None
        for challenge in record.challenges:
            assert repo.get_challenge(challenge.id) == challenge
        assert repo.get_challenge("no-such-challenge") is None


def test_an_authorization_with_another_ones_challenge_is_refused(db: Database) -> None:
    owner = add_account(db)
    record, other = authz(owner.id), authz(owner.id)
    mixed = dataclasses.replace(record, challenges=(record.challenges[0], other.challenges[1]))
    with pytest.raises(ValueError, match="do not belong"), unit_of_work(db, write=True) as s:
        AuthorizationRepository(s).add(mixed)
    assert count_rows(db, "acme_authorizations") == 0
    assert count_rows(db, "acme_challenges") == 0


def test_many_keeps_the_order_asked(db: Database) -> None:
    owner = add_account(db)
    a, b, c = (authz(owner.id, created_at=NOW + k * SECOND) for k in range(3))
    add_authz(db, a, b, c)
    with unit_of_work(db) as s:
        repo = AuthorizationRepository(s)
        assert repo.many([c.id, a.id, b.id]) == [c, a, b]
        assert repo.many([b.id, "no-such-authz", a.id]) == [b, a]
        assert repo.many((a.id,)) == [a]
        assert repo.many([]) == []


def test_reusable_only_when_valid_unexpired_and_the_same_everything(db: Database) -> None:
    owner, stranger = add_account(db), add_account(db)
    wanted = authz(owner.id, status="valid", expires=NOW + HOUR)
    later = authz(owner.id, status="valid", expires=NOW + 2 * HOUR)
    near_misses = [
        authz(owner.id, status="pending", expires=NOW + 3 * HOUR),
        authz(owner.id, status="invalid", expires=NOW + 3 * HOUR),
        authz(owner.id, status="deactivated", expires=NOW + 3 * HOUR),
        authz(owner.id, status="revoked", expires=NOW + 3 * HOUR),
        authz(owner.id, status="valid", expires=NOW),  # expired on this very instant
        authz(stranger.id, status="valid", expires=NOW + 3 * HOUR),
        authz(owner.id, status="valid", expires=NOW + 3 * HOUR, authority="beta"),
        authz(
            owner.id, status="valid", expires=NOW + 3 * HOUR,
            identifier=ACMEIdentifier("dns", "mail.example.test"),
        ),
        authz(
            owner.id, status="valid", expires=NOW + 3 * HOUR,
            identifier=ACMEIdentifier("ip", DNS.value),
        ),
    ]  # fmt: skip
    add_authz(db, *near_misses)
    with unit_of_work(db) as s:
        assert AuthorizationRepository(s).reusable(owner.id, "alpha", DNS, NOW) is None
    add_authz(db, wanted)
    with unit_of_work(db) as s:
        repo = AuthorizationRepository(s)
        assert repo.reusable(owner.id, "alpha", DNS, NOW) == wanted
        assert repo.reusable(owner.id, "alpha", DNS, NOW + HOUR) is None
    add_authz(db, later)
    with unit_of_work(db) as s:
        repo = AuthorizationRepository(s)
        assert repo.reusable(owner.id, "alpha", DNS, NOW) == later  # the longest-lived one
        assert repo.reusable(owner.id, "gamma", DNS, NOW) is None
        assert repo.reusable(stranger.id, "alpha", DNS, NOW + 3 * HOUR) is None


def test_authorization_move_is_a_compare_and_set(db: Database) -> None:
    owner = add_account(db)
    record = authz(owner.id)
    add_authz(db, record)
    with unit_of_work(db, write=True) as s:
        repo = AuthorizationRepository(s)
        assert repo.move(record.id, ["pending"], "valid", expires=NOW + 30 * 24 * HOUR)
        assert repo.move(record.id, ["pending"], "invalid") is False
        assert repo.move(record.id, ["pending"], "valid", expires=NOW) is False
        assert repo.move("no-such-authz", ["pending"], "valid") is False
    valid = dataclasses.replace(record, status="valid", expires=NOW + 30 * 24 * HOUR)
    assert get_authz(db, record.id) == valid
    with unit_of_work(db, write=True) as s:
        assert AuthorizationRepository(s).move(record.id, {"pending", "valid"}, "deactivated")
    assert get_authz(db, record.id) == dataclasses.replace(valid, status="deactivated")


def test_challenge_move_is_a_compare_and_set(db: Database) -> None:
    owner = add_account(db)
    record = authz(owner.id)
    add_authz(db, record)
    http01, alpn01, dns01 = record.challenges
    problem = {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}
    with unit_of_work(db, write=True) as s:
        repo = AuthorizationRepository(s)
        assert repo.move_challenge(http01.id, ["pending"], "processing") is True
        assert repo.move_challenge(http01.id, ["pending"], "processing") is False
        assert repo.move_challenge(dns01.id, ["processing"], "valid", validated_at=NOW) is False
        assert repo.move_challenge("no-such-challenge", ["pending"], "processing") is False
        assert repo.move_challenge(
            http01.id, ["processing"], "invalid", validated_at=NOW + SECOND, error=problem
        )
        assert repo.move_challenge(http01.id, ["processing"], "valid", validated_at=NOW) is False
    with unit_of_work(db) as s:
        repo = AuthorizationRepository(s)
        failed = dataclasses.replace(
            http01, status="invalid", validated_at=NOW + SECOND, error=problem
        )
        assert repo.get_challenge(http01.id) == failed
        assert repo.get_challenge(dns01.id) == dns01
        assert repo.get(record.id) == dataclasses.replace(
            record, challenges=(failed, alpn01, dns01)
        )


def test_failures_since_counts_only_this_accounts_invalid_challenges_in_the_window(
    db: Database,
) -> None:
    owner, stranger = add_account(db), add_account(db)
    since = NOW - HOUR

    def with_challenges(account_id: str, *states: tuple[str, dt.datetime | None]) -> None:
        record = authz(account_id)
        challenges = tuple(
            ACMEChallengeRecord(new_id(), record.id, f"kind-{i}", "tok", status, at)
            for i, (status, at) in enumerate(states)
        )
        add_authz(db, dataclasses.replace(record, challenges=challenges))

    with_challenges(
        owner.id,
        ("invalid", since - SECOND),  # before the window
        ("invalid", since),  # its first instant
        ("valid", NOW - 5 * SECOND),
    )
    with_challenges(owner.id, ("invalid", NOW - 2 * SECOND), ("processing", None))
    with_challenges(owner.id, ("pending", None), ("invalid", NOW - 3 * SECOND))
    with_challenges(stranger.id, ("invalid", NOW - 4 * SECOND))
    with unit_of_work(db) as s:
        repo = AuthorizationRepository(s)
        failures = repo.failures_since(owner.id, since)
        assert failures == [since, NOW - 3 * SECOND, NOW - 2 * SECOND]
        assert all(f.utcoffset() == dt.timedelta(0) for f in failures)
        assert repo.failures_since(stranger.id, since) == [NOW - 4 * SECOND]
        assert repo.failures_since(owner.id, NOW) == []
        assert repo.failures_since("no-such-account", since) == []


# ---------------------------------------------------------------------------- time zones


def test_every_datetime_comes_back_aware_utc(db: Database) -> None:
    owner = add_account(db)
    full = order(owner.id, not_before=NOW, not_after=NOW + HOUR)
    add_orders(db, full)
    record = authz(owner.id)
    add_authz(db, record)
    with unit_of_work(db, write=True) as s:
        AuthorizationRepository(s).move_challenge(
            record.challenges[0].id, ["pending"], "valid", validated_at=NOW
        )
        EABKeyRepository(s).add(eab_key(kid="tz"), b"k")
        EABKeyRepository(s).revoke("tz", NOW)
    with unit_of_work(db) as s:
        got_account = AccountRepository(s).get(owner.id)
        stored_key = EABKeyRepository(s).get("tz")
        assert got_account is not None and stored_key is not None
        records: list[Any] = [
            got_account,
            OrderRepository(s).get(full.id),
            stored_key[0],
            *AuthorizationRepository(s).many([record.id]),
        ]
        challenge = AuthorizationRepository(s).get_challenge(record.challenges[0].id)
        assert challenge is not None
        records.append(challenge)
    stamps = [d for r in records for d in all_datetimes(r)]
    assert len(stamps) >= 9
    assert all(d.tzinfo is not None and d.utcoffset() == dt.timedelta(0) for d in stamps), stamps


def test_a_time_given_in_another_zone_is_stored_as_that_instant(db: Database) -> None:
    """SQLite keeps no offset: a +02:00 time written as its wall clock would be two hours off."""
    plus2 = dt.timezone(dt.timedelta(hours=2))
    local = NOW.astimezone(plus2)
    owner = add_account(db, account(created_at=local))
    with unit_of_work(db, write=True) as s:
        assert NonceRepository(s).use("zoned", (NOW + HOUR).astimezone(plus2))
        OrderRepository(s).add(order(owner.id, id="zoned-order", created_at=local))
    assert get_account(db, owner.id) == owner
    assert get_order(db, "zoned-order").created_at == NOW
    with unit_of_work(db, write=True) as s:
        # Still alive 59 minutes on, asked in yet another zone.
        minus5 = dt.timezone(dt.timedelta(hours=-5))
        assert OrderRepository(s).count_since(owner.id, NOW.astimezone(minus5)) == 1
        assert OrderRepository(s).count_since(owner.id, (NOW + SECOND).astimezone(minus5)) == 0
        # Swept only once expired, whatever zone "now" is given in.
        assert NonceRepository(s).purge((NOW + 59 * 60 * SECOND).astimezone(minus5)) == 0
        assert NonceRepository(s).purge((NOW + HOUR).astimezone(minus5)) == 1


def test_a_naive_time_is_refused(db: Database) -> None:
    """A naive time means UTC on SQLite and the session's zone on PostgreSQL: refuse it."""
    naive = NOW.replace(tzinfo=None)
    with unit_of_work(db, write=True) as s:
        with pytest.raises(ValueError, match="naive"):
            NonceRepository(s).use("naive", naive)
        with pytest.raises(ValueError, match="naive"):
            NonceRepository(s).purge(naive)
        with pytest.raises(ValueError, match="naive"):
            OrderRepository(s).count_since("someone", naive)
    assert count_rows(db, "acme_nonces") == 0
