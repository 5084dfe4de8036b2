"""RFC 8555 section 7.3 on the wire: newAccount, account update and deactivation, keyChange,
and the orders list of an account (live `serve --tls`, SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.live import db_engine, server_tracebacks

from .acme_client import (
    AccountKey,
    ACMEServerUnderTest,
    Reply,
    assert_acme_problem,
    inner_jws,
    live_acme,
    new_key,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def acme(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ACMEServerUnderTest]:
    with live_acme(request.param, tmp_path_factory.mktemp(f"acct-{request.param}")) as server:
        yield server
        assert server_tracebacks(server.live) == 0, server.live.log()[-4000:]


def _accounts(acme: ACMEServerUnderTest) -> int:
    import sqlalchemy as sa

    engine = db_engine(acme.live)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM acme_accounts")).scalar_one())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- newAccount (7.3)


def test_create_then_same_key_finds_it(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key = new_key()
    created = c.new_account(key, contact=["mailto:ops@example.test"])
    assert created.status == 201, created.body
    kid = created.headers["location"]
    assert kid.startswith(acme.base_url + "/acme/") and "/account/" in kid
    body = created.json
    assert body["status"] == "valid"
    assert body["contact"] == ["mailto:ops@example.test"]
    assert body["orders"] == kid + "/orders"
    assert created.link("index")
    again = c.new_account(key)
    assert again.status == 200 and again.headers["location"] == kid
    existing = c.new_account(key, onlyReturnExisting=True)
    assert existing.status == 200 and existing.headers["location"] == kid


def test_only_return_existing_for_an_unknown_key(acme: ACMEServerUnderTest) -> None:
    before = _accounts(acme)
    reply = acme.client.new_account(new_key(), onlyReturnExisting=True)
    assert_acme_problem(reply, 400, "accountDoesNotExist")
    assert _accounts(acme) == before


@pytest.mark.parametrize(
    ("contact", "kind"),
    [
        (["tel:+15555550100"], "unsupportedContact"),
        (["https://example.test/"], "unsupportedContact"),
        (["mailto:not-an-address"], "invalidContact"),
        (["mailto:a@b.test?subject=x"], "invalidContact"),
        (["mailto:a@b.test,c@d.test"], "invalidContact"),
    ],
)
def test_contact_validation(acme: ACMEServerUnderTest, contact: list[str], kind: str) -> None:
    before = _accounts(acme)
    assert_acme_problem(acme.client.new_account(new_key(), contact=contact), 400, kind)
    assert _accounts(acme) == before  # nothing half-written


def test_contact_not_a_list_is_malformed(acme: ACMEServerUnderTest) -> None:
    reply = acme.client.new_account(new_key(), contact="mailto:a@b.test")
    assert_acme_problem(reply, 400, "malformed")


# ---------------------------------------------------------------------------- update (7.3.2)


def test_update_contact_and_read_back(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key = new_key()
    kid = c.account(key, contact=["mailto:a@example.test"])
    updated = c.post(kid, {"contact": ["mailto:b@example.test"]}, key, kid=kid)
    assert updated.status == 200 and updated.json["contact"] == ["mailto:b@example.test"]
    assert c.fetch(kid, key, kid).json["contact"] == ["mailto:b@example.test"]
    bad = c.post(kid, {"contact": ["tel:1"]}, key, kid=kid)
    assert_acme_problem(bad, 400, "unsupportedContact")
    assert c.fetch(kid, key, kid).json["contact"] == ["mailto:b@example.test"]
    assert_acme_problem(c.post(kid, {"status": "valid"}, key, kid=kid), 400, "malformed")


def test_another_accounts_url_is_refused(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, other = new_key(), new_key()
    kid = c.account(key)
    other_kid = c.account(other)
    reply = c.post(other_kid, {"status": "deactivated"}, key, kid=kid)
    assert_acme_problem(reply, 403, "unauthorized")
    assert c.fetch(other_kid, other, other_kid).json["status"] == "valid"


def test_deactivate_stops_every_request(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key = new_key()
    kid = c.account(key)
    order = c.new_order(key, kid, "deact.acme.test")
    assert order.status == 201
    done = c.post(kid, {"status": "deactivated"}, key, kid=kid)
    assert done.status == 200 and done.json["status"] == "deactivated"
    for url in (kid, kid + "/orders", order.headers["location"], order.json["authorizations"][0]):
        assert_acme_problem(c.fetch(url, key, kid), 403, "unauthorized")
    assert_acme_problem(c.new_order(key, kid, "x.acme.test"), 403, "unauthorized")


# ---------------------------------------------------------------------------- keyChange (7.3.5)


def _key_change(
    acme: ACMEServerUnderTest,
    key: AccountKey,
    kid: str,
    new: AccountKey,
    *,
    account: str | None = None,
    old: AccountKey | None = None,
    url: str | None = None,
) -> Reply:
    c = acme.client
    target = c.directory["keyChange"]
    inner = inner_jws(
        new,
        {"account": account or kid, "oldKey": (old or key).public},
        url or target,
    )
    return c.post(target, inner, key, kid=kid)


def test_key_change_swaps_the_key(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    old, new = new_key("ES256"), new_key("ES256")
    kid = c.account(old)
    reply = _key_change(acme, old, kid, new)
    assert reply.status == 200, reply.body
    assert c.fetch(kid, new, kid).status == 200
    assert_acme_problem(c.fetch(kid, old, kid), 400, "malformed")  # not the account's key now
    assert c.new_account(new, onlyReturnExisting=True).headers["location"] == kid
    assert_acme_problem(c.new_account(old, onlyReturnExisting=True), 400, "accountDoesNotExist")


def test_key_change_to_another_key_type(acme: ACMEServerUnderTest) -> None:
    """After ES256 -> EdDSA, an ES256-signed request for the account is refused as
    badSignatureAlgorithm (the algorithm does not suit the account's key) before any
    signature is checked; section 6.2 allows that answer for an algorithm the key cannot use."""
    c = acme.client
    old, new = new_key("ES256"), new_key("EdDSA")
    kid = c.account(old)
    assert _key_change(acme, old, kid, new).status == 200
    assert c.fetch(kid, new, kid).status == 200
    assert_acme_problem(c.fetch(kid, old, kid), 400, "badSignatureAlgorithm")


def test_key_change_to_a_key_in_use_is_409_with_its_location(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key, taken = new_key(), new_key()
    kid = c.account(key)
    holder = c.account(taken)
    reply = _key_change(acme, key, kid, taken)
    assert_acme_problem(reply, 409, "malformed")
    # Section 7.3.5: the 409 names the account that holds the key in Location.
    assert reply.headers.get("location") == holder
    assert c.fetch(kid, key, kid).status == 200  # the old key still works


def test_key_change_refusals(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key = new_key()
    kid = c.account(key)
    other_kid = c.account(new_key())
    new = new_key()
    wrong_url = _key_change(acme, key, kid, new, url=c.directory["newOrder"])
    assert_acme_problem(wrong_url, 403, "unauthorized")
    wrong_old = _key_change(acme, key, kid, new, old=new_key())
    assert_acme_problem(wrong_old, 400, "malformed")
    wrong_account = _key_change(acme, key, kid, new, account=other_kid)
    assert_acme_problem(wrong_account, 400, "malformed")
    same = _key_change(acme, key, kid, key)
    assert_acme_problem(same, 400, "malformed")
    small = _key_change(acme, key, kid, new_key("RS1024"))
    assert_acme_problem(small, 400, "badPublicKey")
    # Signed by the new key but the outer by a key that is not the account's: no change.
    intruder = c.post(
        c.directory["keyChange"],
        inner_jws(new, {"account": kid, "oldKey": key.public}, c.directory["keyChange"]),
        new,
        kid=kid,
    )
    assert_acme_problem(intruder, 400, "malformed")
    assert c.fetch(kid, key, kid).status == 200  # nothing changed
    assert_acme_problem(c.new_account(new, onlyReturnExisting=True), 400, "accountDoesNotExist")


# ---------------------------------------------------------------------------- orders list (7.1.2.1)


def test_orders_list(acme: ACMEServerUnderTest) -> None:
    c = acme.client
    key = new_key()
    kid = c.account(key)
    placed = [c.new_order(key, kid, f"list{i}.acme.test").headers["location"] for i in range(3)]
    listed = c.fetch(kid + "/orders", key, kid)
    assert listed.status == 200
    assert sorted(listed.json["orders"]) == sorted(placed)
    assert not listed.link("next")
    # Another account's orders URL is not this account's to read.
    other = new_key()
    other_kid = c.account(other)
    assert_acme_problem(c.fetch(kid + "/orders", other, other_kid), 403, "unauthorized")
    assert c.fetch(other_kid + "/orders", other, other_kid).json["orders"] == []
