"""The process's cache of verified API tokens (TokenService.authenticate_to_confirm) and the
store's confirmation of a cached token inside the issuance's write transaction
(domain.TokenConfirmation, core/issued_records.py), in-process on SQLite and PostgreSQL.

The cache may only save a query: it never accepts a secret the stored hash does not match, an
expired token, or a token the store does not know; it stays within CACHE_LIMIT; and a token
revoked in another process is stopped by the store's check, with nothing stored.
"""

from __future__ import annotations

import datetime as dt
import hmac
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa

import ca_service.tokens as tokens_module
from ca_service.clock import FixedClock
from ca_service.core.facade import Core
from ca_service.domain import Actor, CallerPolicy, KeyType, Role, TokenConfirmation
from ca_service.errors import Unauthorized
from ca_service.policy.authorization import build_policy
from ca_service.storage.tokens import TokenRepository
from ca_service.tokens import TokenService

from .conftest import make_settings, new_ca
from .helpers import count_key_generation, count_rows, csr_pem, make_key

ADMIN = Actor("test:admin")
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
NAMES = ["*.cache.example.test"]


@pytest.fixture(scope="module")
def module_core(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    """One CA per backend for the module (a hierarchy is the costly part)."""
    ca = new_ca(make_settings(tmp_path_factory.mktemp("token-cache"), module_db_url))
    yield ca
    ca.db.dispose()


@pytest.fixture
def clock(module_core: Core) -> Iterator[FixedClock]:
    """A clock that moves only when told, for the token service and the core alike."""
    before = module_core.clock
    fixed = FixedClock(dt.datetime.now(dt.UTC))
    module_core.clock = fixed
    yield fixed
    module_core.clock = before


@pytest.fixture
def service(module_core: Core, clock: FixedClock) -> TokenService:
    return TokenService(module_core.db, clock, module_core.refusals)


def _issuer(service: TokenService, **kwargs: dt.datetime) -> tuple[str, str]:
    policy = build_policy(Role.ISSUER, names=NAMES)
    plain, record = service.create("cache-issuer", Role.ISSUER, policy, ADMIN, **kwargs)
    return plain, record.id


def _id_and_secret(plain: str) -> tuple[str, str]:
    _, token_id, secret = plain.split("_", 2)
    return token_id, secret


# ---------------------------------------------------------------------------- the cache


def test_a_cached_token_is_refused_once_its_expiry_has_passed(
    service: TokenService, clock: FixedClock
) -> None:
    plain, token_id = _issuer(service, expires_at=clock.now() + dt.timedelta(hours=1))
    record, confirmation = service.authenticate_to_confirm(plain)
    assert record.id == token_id and confirmation.token_id == token_id
    assert not confirmation.confirmed  # only the store confirms
    assert token_id in service._verified

    clock.advance(dt.timedelta(hours=1) - dt.timedelta(seconds=1))
    assert service.authenticate_to_confirm(plain)[0].id == token_id
    clock.advance(dt.timedelta(seconds=1))  # expires_at itself is expired (<=)
    with pytest.raises(Unauthorized, match="expired"):
        service.authenticate_to_confirm(plain)
    # The store agrees, and a query that finds it expired takes it out of the cache.
    with pytest.raises(Unauthorized, match="expired"):
        service.authenticate(plain)
    assert token_id not in service._verified
    with pytest.raises(Unauthorized, match="expired"):
        service.authenticate_to_confirm(plain)


def test_a_wrong_secret_for_a_cached_id_is_refused_in_constant_time(
    service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, token_id = _issuer(service)
    service.authenticate_to_confirm(plain)
    assert token_id in service._verified
    _, secret = _id_and_secret(plain)

    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("ca_service.tokens.hmac.compare_digest", spy)
    forged = f"cas_{token_id}_{'B' * 43}"
    with pytest.raises(Unauthorized, match="unknown bearer token"):
        service.authenticate_to_confirm(forged)
    # Compared with the stored hash (the cache keeps the hash, never the secret).
    stored = tokens_module._hash(secret)
    assert compared == [(stored, tokens_module._hash("B" * 43))]
    # The forgery neither evicts nor replaces the real token, which still works from the cache.
    assert service._verified[token_id][1] == stored
    assert service.authenticate_to_confirm(plain)[0].id == token_id
    # A secret differing in one character only is refused too.
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    with pytest.raises(Unauthorized, match="unknown bearer token"):
        service.authenticate_to_confirm(f"cas_{token_id}_{flipped}")


def test_an_unknown_id_is_refused_and_not_cached(
    service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("ca_service.tokens.hmac.compare_digest", spy)
    unknown = "cas_0123456789abcdef_" + "A" * 43
    for _ in range(2):  # the second time as well: nothing was remembered the first
        with pytest.raises(Unauthorized, match="unknown bearer token"):
            service.authenticate_to_confirm(unknown)
    assert "0123456789abcdef" not in service._verified
    # The same comparison as for a known id, against the hash of nothing.
    assert len(compared) == 2 and all(a == tokens_module._hash("") for a, _ in compared)
    for malformed in ("cas_nope", "", "cas_0123456789ABCDEF_" + "A" * 43):
        with pytest.raises(Unauthorized, match="malformed"):
            service.authenticate_to_confirm(malformed)
    assert service._verified == {}


def test_a_revoked_token_is_taken_out_of_the_cache_by_the_query_that_finds_it(
    module_core: Core, service: TokenService, clock: FixedClock
) -> None:
    plain, token_id = _issuer(service)
    service.authenticate_to_confirm(plain)
    # Revoked by another process: this one's cache still has it, as designed ...
    TokenService(module_core.db, clock).revoke(token_id, ADMIN)
    assert service.authenticate_to_confirm(plain)[0].id == token_id
    # ... until a query of the store (web/auth.py's _settle_confirmation makes one) sees it.
    with pytest.raises(Unauthorized, match="revoked"):
        service.authenticate(plain)
    assert token_id not in service._verified
    with pytest.raises(Unauthorized, match="revoked"):
        service.authenticate_to_confirm(plain)
    # Revoked in this process: forgotten at once.
    plain2, token2 = _issuer(service)
    service.authenticate_to_confirm(plain2)
    service.revoke(token2, ADMIN)
    assert token2 not in service._verified
    with pytest.raises(Unauthorized, match="revoked"):
        service.authenticate_to_confirm(plain2)


def test_the_cache_never_holds_more_than_cache_limit(
    service: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens_module, "CACHE_LIMIT", 3)
    made = [_issuer(service) for _ in range(8)]
    sizes = []
    for _ in range(2):  # twice round: tokens dropped by a reset are fetched again
        for plain, token_id in made:
            assert service.authenticate_to_confirm(plain)[0].id == token_id
            sizes.append(len(service._verified))
            assert token_id in service._verified  # the token just verified is kept
    assert max(sizes) == 3 and min(sizes) >= 1
    # Refusals add nothing either.
    with pytest.raises(Unauthorized):
        service.authenticate_to_confirm("cas_0123456789abcdef_" + "A" * 43)
    assert len(service._verified) <= 3


# ---------------------------------------------------------------------------- the store's check


def _actor_of(service: TokenService, plain: str) -> tuple[Actor, TokenConfirmation]:
    record, confirmation = service.authenticate_to_confirm(plain)
    actor = replace(record.actor("rid-cache", "127.0.0.1"), confirm=confirmation)
    return actor, confirmation


def _stored(ca: Core) -> tuple[int, int]:
    return count_rows(ca.db, "certificates"), _issue_events(ca)


def _issue_events(ca: Core) -> int:
    with ca.db.engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM audit_events WHERE action = 'certificate.issue'")
        return int(conn.execute(query).scalar_one())


def test_the_core_refuses_a_cached_token_revoked_elsewhere_and_stores_nothing(
    module_core: Core, service: TokenService, clock: FixedClock
) -> None:
    plain, token_id = _issuer(service)
    actor, confirmation = _actor_of(service, plain)
    TokenService(module_core.db, clock).revoke(token_id, ADMIN)  # another process
    before = _stored(module_core)
    csr = csr_pem(make_key(), "r.cache.example.test", ["r.cache.example.test"])
    with pytest.raises(Unauthorized, match="revoked"):
        module_core.issue_from_csr(csr, actor)
    assert not confirmation.confirmed
    assert _stored(module_core) == before
    # The same with a key generated here.
    confirmation2 = TokenConfirmation(token_id)
    with pytest.raises(Unauthorized, match="revoked"):
        module_core.issue_with_new_key(
            replace(actor, confirm=confirmation2), common_name="k.cache.example.test"
        )
    assert not confirmation2.confirmed
    assert _stored(module_core) == before


def test_a_cached_revoked_token_gets_no_rsa_key_made(
    module_core: Core, service: TokenService, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RSA key costs 50 ms to seconds: a token from the cache is confirmed before one is
    made for it, so a revoked token cannot spend a worker's CPU. An active token still gets its
    key and certificate, confirmed."""
    made = count_key_generation(monkeypatch)
    plain, token_id = _issuer(service)
    actor, confirmation = _actor_of(service, plain)
    TokenService(module_core.db, clock).revoke(token_id, ADMIN)  # another process
    before = _stored(module_core)
    with pytest.raises(Unauthorized, match="revoked"):
        module_core.issue_with_new_key(
            actor, common_name="rsa.cache.example.test", key_type=KeyType.RSA_4096
        )
    assert made == [] and not confirmation.confirmed
    assert _stored(module_core) == before

    plain, _ = _issuer(service)
    actor, confirmation = _actor_of(service, plain)
    issued = module_core.issue_with_new_key(
        actor, common_name="rsa2.cache.example.test", key_type=KeyType.RSA_2048
    )
    assert made == [KeyType.RSA_2048] and confirmation.confirmed
    assert issued.private_key_pem is not None


def test_the_core_refuses_a_token_expired_or_unknown_in_the_store(
    module_core: Core, service: TokenService, clock: FixedClock
) -> None:
    plain, _ = _issuer(service, expires_at=clock.now() + dt.timedelta(minutes=5))
    actor, _ = _actor_of(service, plain)
    before = _stored(module_core)
    csr = csr_pem(make_key(), "e.cache.example.test", ["e.cache.example.test"])
    clock.advance(dt.timedelta(minutes=5))  # the core's clock: the store's check uses it
    with pytest.raises(Unauthorized, match="expired"):
        module_core.issue_from_csr(csr, actor)
    unknown = replace(actor, confirm=TokenConfirmation("0123456789abcdef"))
    with pytest.raises(Unauthorized, match="unknown"):
        module_core.issue_from_csr(csr, unknown)
    assert _stored(module_core) == before


def test_the_core_confirms_an_active_token_in_the_issuance_transaction(
    module_core: Core, service: TokenService
) -> None:
    plain, _ = _issuer(service)
    actor, confirmation = _actor_of(service, plain)
    before = _stored(module_core)
    csr = csr_pem(make_key(), "ok.cache.example.test", ["ok.cache.example.test"])
    issued = module_core.issue_from_csr(csr, actor)
    assert confirmation.confirmed
    assert issued.record.common_name == "ok.cache.example.test"
    assert _stored(module_core) == (before[0] + 1, before[1] + 1)
    # Without a confirmation (a query-authenticated caller) nothing changes either.
    assert module_core.issue_from_csr(csr, replace(actor, confirm=None)).record.serial


def test_one_revoked_token_in_a_group_commit_batch_does_not_sink_the_others(
    module_core: Core, service: TokenService, clock: FixedClock
) -> None:
    """Force one batch: hold the group commit's turn while every thread queues its job, so
    the first thread to get the turn runs them all in one transaction (storage/group_commit)."""
    live_plain, _ = _issuer(service)
    dead_plain, dead_id = _issuer(service)
    dead_actor, dead_confirmation = _actor_of(service, dead_plain)
    TokenService(module_core.db, clock).revoke(dead_id, ADMIN)
    group = module_core._issuance.records._group()
    before = _stored(module_core)

    outcomes: dict[int, object] = {}
    confirmations: dict[int, TokenConfirmation] = {}

    def run(i: int) -> None:
        if i == 2:
            actor, confirmations[i] = dead_actor, dead_confirmation
        else:
            actor, confirmations[i] = _actor_of(service, live_plain)
        name = f"g{i}.cache.example.test"
        try:
            outcomes[i] = module_core.issue_from_csr(csr_pem(make_key(), name, [name]), actor)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(5)]
    with group._turn:
        for t in threads:
            t.start()
        for _ in range(500):  # until every job is queued behind the held turn (bounded)
            if len(group._queue) == len(threads):
                break
            threading.Event().wait(0.01)
        assert len(group._queue) == len(threads)
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)

    assert isinstance(outcomes[2], Unauthorized) and "revoked" in str(outcomes[2])
    assert not dead_confirmation.confirmed
    ok = [i for i in outcomes if i != 2]
    assert all(not isinstance(outcomes[i], Exception) for i in ok), outcomes
    assert all(confirmations[i].confirmed for i in ok)
    assert _stored(module_core) == (before[0] + 4, before[1] + 4)


def test_a_batch_checks_its_token_and_its_ca_once_and_sends_its_rows_together(
    module_core: Core, service: TokenService
) -> None:
    """Six issuances with one token from one CA in one batch: one read of the token's state,
    one of the CA's revocation, one executemany each for the certificates and their events;
    every certificate and event stored, every confirmation set."""
    plain, _ = _issuer(service)
    group = module_core._issuance.records._group()
    before = _stored(module_core)
    seen: list[tuple[str, bool]] = []

    def count(_c: object, _cur: object, statement: str, _p: object, _x: object, many: bool) -> None:
        seen.append((" ".join(statement.split())[:60], many))

    outcomes: dict[int, object] = {}
    confirmations: dict[int, TokenConfirmation] = {}

    def run(i: int) -> None:
        actor, confirmations[i] = _actor_of(service, plain)
        name = f"b{i}.cache.example.test"
        try:
            outcomes[i] = module_core.issue_from_csr(csr_pem(make_key(), name, [name]), actor)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(6)]
    sa.event.listen(module_core.db.engine, "before_cursor_execute", count)
    try:
        with group._turn:
            for t in threads:
                t.start()
            for _ in range(500):  # until every job is queued behind the held turn (bounded)
                if len(group._queue) == len(threads):
                    break
                threading.Event().wait(0.01)
            assert len(group._queue) == len(threads)
        for t in threads:
            t.join(timeout=60)
    finally:
        sa.event.remove(module_core.db.engine, "before_cursor_execute", count)
    assert not any(t.is_alive() for t in threads)
    assert all(not isinstance(o, Exception) for o in outcomes.values()), outcomes
    assert all(c.confirmed for c in confirmations.values())
    assert _stored(module_core) == (before[0] + 6, before[1] + 6)
    token_reads = [s for s, _ in seen if s.startswith("SELECT api_tokens.revoked_at")]
    ca_reads = [s for s, _ in seen if s.startswith("SELECT certificates.status")]
    cert_inserts = [m for s, m in seen if s.startswith("INSERT INTO certificates")]
    audit_inserts = [m for s, m in seen if s.startswith("INSERT INTO audit_events")]
    assert len(token_reads) == 1 and len(ca_reads) == 1, seen
    assert cert_inserts == [True] and audit_inserts == [True], seen


def test_policy_is_unchanged_by_the_cache(service: TokenService) -> None:
    """The cached record is the stored one: role and policy as created."""
    plain, _ = _issuer(service)
    first, _ = service.authenticate_to_confirm(plain)
    cached, _ = service.authenticate_to_confirm(plain)
    assert cached == first == service.authenticate(plain)
    assert cached.role is Role.ISSUER and cached.policy != CallerPolicy()


# Bounded wait for a revocation started inside an issuance's transaction: it should wait for
# that transaction (a lock); a revocation that gets through in this time was not held back.
REVOKE_WAIT_SECONDS = 5.0


def test_a_revocation_during_the_issuance_transaction_waits_for_it(
    request: pytest.FixtureRequest,
    module_core: Core,
    service: TokenService,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issuance either commits before the token's revocation or not at all, as the check
    of the issuing CA's own revocation does (AuthorityRepository.revocation_of_certificate,
    share_lock=True). Here the revocation is started right after the store's check of the
    token, inside the issuance's transaction, and may finish only after that commits."""
    plain, token_id = _issuer(service)
    actor, confirmation = _actor_of(service, plain)
    revoked = threading.Event()
    errors: list[BaseException] = []
    seen: list[bool] = []

    def revoke() -> None:
        try:
            TokenService(module_core.db, clock).revoke(token_id, ADMIN)
            revoked.set()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=revoke, daemon=True)
    original = TokenRepository.state

    def state_then_revoke(
        self: TokenRepository, tid: str, now: dt.datetime, *, share_lock: bool = False
    ) -> str:
        found = original(self, tid, now, share_lock=share_lock)
        if tid == token_id and not seen:
            thread.start()
            seen.append(revoked.wait(REVOKE_WAIT_SECONDS))
        return found

    monkeypatch.setattr(TokenRepository, "state", state_then_revoke)
    csr = csr_pem(make_key(), "race.cache.example.test", ["race.cache.example.test"])
    try:
        module_core.issue_from_csr(csr, actor)
        issued = True
    except Unauthorized:
        issued = False
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == [] and revoked.is_set()
    assert seen, "the store's check of the token did not run"
    # The revocation got through while the issuance's transaction was open, yet it committed.
    assert not (seen[0] and issued), "a certificate was stored after its token's revocation"
    assert confirmation.confirmed == issued
