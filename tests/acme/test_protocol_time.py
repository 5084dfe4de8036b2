"""The time-driven parts of RFC 8555 (expiry of orders and authorizations, the reuse window,
an interrupted validation, rate-limit windows) and what needs many requests (the orders list
pages), in this process: the real Flask app over a Core whose clock the test moves, with
``ACMEServer(core, eab, run_validation=lambda work: work())`` validating synchronously against
a loopback http-01 responder. Also: ACME refuses to run on a non-https public_url."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from ca_service.acme.orders import STALE_VALIDATION
from ca_service.acme.server import ACMEServer

from .acme_client import (
    AccountKey,
    ACMEServerUnderTest,
    AppTransport,
    Client,
    app_acme,
    assert_acme_problem,
    authorize,
    finalize,
    issue,
    make_csr,
    new_key,
    sign,
)


@pytest.fixture(scope="module")
def acme(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEServerUnderTest]:
    with app_acme(module_db_url, tmp_path_factory.mktemp("acme-time")) as server:
        yield server


@pytest.fixture(scope="module")
def limited(
    module_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEServerUnderTest]:
    """Another CA whose limits are 2 orders and 2 failed validations an hour per account."""
    base = tmp_path_factory.mktemp("acme-limits")
    url = module_db_url
    if url.startswith("sqlite"):
        url = f"sqlite:///{base / 'limits.db'}"
    else:
        from tests.conftest import drop_pg_schema, make_pg_schema

        url, schema = make_pg_schema()
    try:
        with app_acme(
            url, base, acme_orders_per_hour=2, acme_failed_validations_per_hour=2
        ) as server:
            yield server
    finally:
        if not module_db_url.startswith("sqlite"):
            drop_pg_schema(schema)


def _account(acme: ACMEServerUnderTest) -> tuple[AccountKey, str]:
    key = new_key()
    return key, acme.client.account(key)


def _server(acme: ACMEServerUnderTest) -> ACMEServer:
    found = acme.app.extensions["ca_acme"]
    assert isinstance(found, ACMEServer)
    return found


# ---------------------------------------------------------------------------- https only (6.1)


def test_plain_http_public_url_refuses_every_route(module_db_url: str, tmp_path: Path) -> None:
    url = module_db_url
    if url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'http.db'}"
    else:
        pytest.skip("one backend is enough for a setting check")
    with app_acme(url, tmp_path, public="http://ca.acme.test:8080") as server:
        c = Client(AppTransport(server.app), "http://ca.acme.test:8080/acme/directory", load=False)
        base = "http://ca.acme.test:8080/acme/default"
        assert_acme_problem(c.get("http://ca.acme.test:8080/acme/directory"), 404, "malformed")
        assert_acme_problem(c.get(f"{base}/directory"), 404, "malformed")
        assert c.get(f"{base}/new-nonce", "HEAD").status == 404
        assert_acme_problem(c.get(f"{base}/new-nonce"), 404, "malformed")
        assert_acme_problem(c.get(f"{base}/renewal-info/a.b"), 404, "malformed")
        key = new_key()
        for path in (
            "new-account",
            "new-order",
            "revoke-cert",
            "key-change",
            "account/x",
            "order/x",
            "order/x/finalize",
            "authz/x",
            "chall/x",
            "cert/x",
        ):
            body = sign(key, {}, url=f"{base}/{path}", nonce="n")
            reply = c.raw(f"{base}/{path}", body)
            problem = assert_acme_problem(reply, 404, "malformed")
            assert "https" in problem["detail"].lower()


# ---------------------------------------------------------------------------- expiry (7.1.6)


def test_expired_order_and_authorization(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    placed = c.new_order(key, kid, "expire.acme.test")
    url, authz_url = placed.headers["location"], placed.json["authorizations"][0]
    lifetime = dt.timedelta(hours=acme.core.settings.acme_order_lifetime_hours)
    acme.clock.advance(lifetime - dt.timedelta(minutes=1))
    assert c.fetch(url, key, kid).json["status"] == "pending"
    acme.clock.advance(dt.timedelta(minutes=2))
    order = c.fetch(url, key, kid).json
    assert order["status"] == "invalid"
    assert order["error"]["type"].startswith("urn:ietf:params:acme:error:")
    authz = c.fetch(authz_url, key, kid).json
    assert authz["status"] == "expired"
    # An expired authorization's challenge is not validated any more.
    chall = authz["challenges"][0]
    acme.http01.allow(chall["token"], key)
    assert c.post(chall["url"], {}, key, kid=kid).json["status"] == "pending"
    assert acme.http01.hits.get(chall["token"], 0) == 0
    assert_acme_problem(
        finalize(c, key, kid, url, make_csr(["expire.acme.test"])), 403, "orderNotReady"
    )


def test_ready_order_whose_authorization_expires_is_invalid(acme: ACMEServerUnderTest) -> None:
    """Section 7.1.6: an order moves to invalid when one of its authorizations reaches a final
    state other than valid; a ready order is no exception, and it cannot be finalized."""
    c = acme.client
    key, kid = _account(acme)
    issue(c, key, kid, ["late.acme.test"], acme.http01)
    reuse = dt.timedelta(hours=acme.core.settings.acme_authz_reuse_hours)
    acme.clock.advance(reuse - dt.timedelta(hours=2))
    placed = c.new_order(key, kid, "late.acme.test")
    assert placed.json["status"] == "ready"  # the authorization is reused
    acme.clock.advance(dt.timedelta(hours=3))  # the reused authorization expires
    assert c.fetch(placed.json["authorizations"][0], key, kid).json["status"] == "expired"
    assert c.fetch(placed.headers["location"], key, kid).json["status"] == "invalid"
    reply = finalize(c, key, kid, placed.headers["location"], make_csr(["late.acme.test"]))
    assert_acme_problem(reply, 403, "orderNotReady")


def test_deactivating_the_authorization_of_a_ready_order(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    placed = c.new_order(key, kid, "deready.acme.test")
    authorize(c, key, kid, placed.json, acme.http01)
    url = placed.headers["location"]
    assert c.fetch(url, key, kid).json["status"] == "ready"
    done = c.post(placed.json["authorizations"][0], {"status": "deactivated"}, key, kid=kid)
    assert done.json["status"] == "deactivated"
    assert c.fetch(url, key, kid).json["status"] == "invalid"
    reply = finalize(c, key, kid, url, make_csr(["deready.acme.test"]))
    assert_acme_problem(reply, 403, "orderNotReady")


def test_authorization_reuse_window(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    issue(c, key, kid, ["window.acme.test"], acme.http01)
    reuse = dt.timedelta(hours=acme.core.settings.acme_authz_reuse_hours)
    acme.clock.advance(reuse - dt.timedelta(hours=1))
    assert c.new_order(key, kid, "window.acme.test").json["status"] == "ready"
    acme.clock.advance(dt.timedelta(hours=2))
    assert c.new_order(key, kid, "window.acme.test").json["status"] == "pending"


def test_stale_processing_challenge_becomes_invalid(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    placed = c.new_order(key, kid, "stale.acme.test")
    authz_url = placed.json["authorizations"][0]
    chall = next(
        ch for ch in c.fetch(authz_url, key, kid).json["challenges"] if ch["type"] == "http-01"
    )
    orders = _server(acme).orders
    runner = orders.run_validation
    orders.run_validation = lambda work: None  # a worker that died before validating
    try:
        answered = c.post(chall["url"], {}, key, kid=kid)
    finally:
        orders.run_validation = runner
    assert answered.json["status"] == "processing"
    assert answered.headers.get("retry-after")
    acme.clock.advance(STALE_VALIDATION - dt.timedelta(seconds=30))
    assert c.fetch(chall["url"], key, kid).json["status"] == "processing"
    acme.clock.advance(dt.timedelta(minutes=1))
    authz = c.fetch(authz_url, key, kid).json
    assert authz["status"] == "invalid"
    stale = next(ch for ch in authz["challenges"] if ch["url"] == chall["url"])
    assert stale["status"] == "invalid" and "error" in stale
    assert c.fetch(placed.headers["location"], key, kid).json["status"] == "invalid"


# ---------------------------------------------------------------------------- rate limits


def test_orders_per_hour(limited: ACMEServerUnderTest) -> None:
    c = limited.client
    key, kid = _account(limited)
    assert c.new_order(key, kid, "r1.acme.test").status == 201
    limited.clock.advance(dt.timedelta(minutes=10))
    assert c.new_order(key, kid, "r2.acme.test").status == 201
    third = c.new_order(key, kid, "r3.acme.test")
    assert_acme_problem(third, 429, "rateLimited")
    wait = int(third.headers["retry-after"])
    assert 0 < wait <= 3600 - 600 + 1
    # Another account has its own budget.
    other, other_kid = _account(limited)
    assert c.new_order(other, other_kid, "r3.acme.test").status == 201
    limited.clock.advance(dt.timedelta(seconds=wait))
    assert c.new_order(key, kid, "r3.acme.test").status == 201


def test_failed_validations_per_hour(limited: ACMEServerUnderTest) -> None:
    c = limited.client
    key, kid = _account(limited)
    challenges = []
    for name in ("f1.acme.test", "f2.acme.test"):
        placed = c.new_order(key, kid, name, f"x{name}")
        for authz_url in placed.json["authorizations"]:
            authz = c.fetch(authz_url, key, kid).json
            challenges.append(next(ch for ch in authz["challenges"] if ch["type"] == "http-01"))
    for chall in challenges[:2]:  # nobody answers on the responder: both fail
        assert c.post(chall["url"], {}, key, kid=kid).json["status"] == "invalid"
    refused = c.post(challenges[2]["url"], {}, key, kid=kid)
    assert_acme_problem(refused, 429, "rateLimited")
    assert int(refused.headers["retry-after"]) > 0
    assert c.fetch(challenges[2]["url"], key, kid).json["status"] == "pending"
    limited.clock.advance(dt.timedelta(hours=1, seconds=1))
    limited.http01.allow(challenges[2]["token"], key)
    assert c.post(challenges[2]["url"], {}, key, kid=kid).json["status"] == "valid"


# ---------------------------------------------------------------------------- orders list


def test_orders_list_pages(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    placed = {c.new_order(key, kid, f"page{i}.acme.test").headers["location"] for i in range(105)}
    first = c.fetch(kid + "/orders", key, kid)
    assert first.status == 200
    assert len(first.json["orders"]) == 100
    (next_url,) = first.link("next")
    second = c.fetch(next_url, key, kid)
    assert second.status == 200 and not second.link("next")
    assert len(second.json["orders"]) == 5
    assert set(first.json["orders"]) | set(second.json["orders"]) == placed
    assert not set(first.json["orders"]) & set(second.json["orders"])


def test_finalize_records_the_certificate_before_valid(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    _, final, _ = issue(c, key, kid, ["stored.acme.test"], acme.http01)
    serial = final["certificate"].rsplit("/", 1)[1]
    record = acme.core.get_certificate(serial)
    assert record.requester == f"acme:{kid.rsplit('/', 1)[1]}"
    assert record.created_at <= acme.clock.now()


def test_nonce_expires(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    nonce = c.nonce()
    lifetime = dt.timedelta(seconds=acme.core.settings.acme_nonce_lifetime_seconds)
    acme.clock.advance(lifetime + dt.timedelta(seconds=1))
    assert_acme_problem(c.post(kid, None, key, kid=kid, nonce=nonce), 400, "badNonce")
    assert c.post(kid, None, key, kid=kid).status == 200


def test_bad_orders_cursor(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    c.new_order(key, kid, "cursor.acme.test")
    for cursor in ("zzz", "%00", "x" * 300):
        reply = c.fetch(f"{kid}/orders?cursor={cursor}", key, kid)
        assert reply.status in (200, 400), (cursor, reply.status, reply.body[:300])
        if reply.status == 200:
            assert isinstance(reply.json["orders"], list)
        else:
            assert reply.json["type"].startswith("urn:ietf:params:acme:error:")


def test_too_many_identifiers_and_contacts(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, kid = _account(acme)
    many = [f"n{i}.acme.test" for i in range(101)]
    assert_acme_problem(c.new_order(key, kid, *many), 400, "rejectedIdentifier")
    assert c.new_order(key, kid, *many[:100]).status == 201
    contacts = [f"mailto:a{i}@example.test" for i in range(11)]
    assert_acme_problem(c.post(kid, {"contact": contacts}, key, kid=kid), 400, "invalidContact")
    assert c.fetch(kid, key, kid).json["contact"] == []


def test_get_on_post_only_resources_is_405(acme: ACMEServerUnderTest) -> None:
    """Section 6.3: resources other than the directory and newNonce are not served by GET."""
    c = acme.client
    key, kid = _account(acme)
    placed = c.new_order(key, kid, "get.acme.test")
    for url in (
        kid,
        placed.headers["location"],
        placed.json["authorizations"][0],
        c.directory["newOrder"],
        c.directory["newAccount"],
    ):
        reply = c.get(url)
        assert reply.status == 405, (url, reply.status)
        assert reply.content_type == "application/problem+json"
