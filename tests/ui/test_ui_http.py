"""The admin web UI over HTTP (issue 13, items 1-6): a real `ca-service serve` (gunicorn) on
SQLite, one per module, driven like a browser with JavaScript off: plain GETs and form POSTs
with a cookie jar, every page parsed.

What must hold: sign-in makes a server-side session (cookie flags, a new id each time, idle
and absolute ends, a revoked token ending it at once), every POST needs the session's CSRF
token, a reader can neither see nor use admin controls, every page carries the security
headers and no inline script or style, the token never shows up in a page or the log, search
and pagination work through URLs, revocation asks first and ends in a CRL that lists it, and
bad input answers 4xx, never 500.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import sqlalchemy as sa
from cryptography import x509

from ..conftest import live_server
from ..live import LiveServer, create_token, db_engine, issue, list_all, server_tracebacks
from .client import COOKIE, CSP, Browser, Page, certificate_path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server("sqlite", tmp_path_factory.mktemp("ui-live")) as server:
        yield server


@pytest.fixture(scope="module")
def admin(live: LiveServer) -> tuple[str, str]:
    """An admin token of its own (the first admin's is printed in the log at first start)."""
    return create_token(live, "admin", name="ui-admin")


@pytest.fixture(scope="module")
def reader(live: LiveServer) -> tuple[str, str]:
    return create_token(live, "reader", name="ui-reader")


def _issue(live: LiveServer, cn: str, **body: Any) -> dict[str, Any]:
    body.setdefault("sans", [cn])
    item: dict[str, Any] = issue(live, common_name=cn, **body).json
    return item


def _tokens(live: LiveServer) -> list[dict[str, Any]]:
    reply = live.request("GET", "/api/v1/tokens", token=live.admin_token)
    assert reply.status == 200
    items: list[dict[str, Any]] = reply.json["items"]
    return items


def _api_certificate(live: LiveServer, serial: str) -> dict[str, Any]:
    reply = live.request("GET", f"/api/v1/certificates/{serial}", token=live.admin_token)
    assert reply.status == 200, reply.body
    item: dict[str, Any] = reply.json
    return item


def _events(live: LiveServer, **filters: str) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={quote(v)}" for k, v in filters.items())
    return list_all(live, "/api/v1/audit" + (f"?{query}" if query else ""))


def _session_row(live: LiveServer, key: str) -> Any:
    engine = db_engine(live)
    try:
        with engine.begin() as conn:
            return conn.execute(
                sa.text("SELECT * FROM ui_sessions WHERE id_sha256 = :k"), {"k": key}
            ).one_or_none()
    finally:
        engine.dispose()


def _move_session(live: LiveServer, key: str, **times: dt.datetime) -> None:
    """Set a session's times in the store (its idle and absolute ends are read from there)."""
    engine = db_engine(live)
    try:
        sets = ", ".join(f"{k} = :{k}" for k in times)
        with engine.begin() as conn:
            changed = conn.execute(
                sa.text(f"UPDATE ui_sessions SET {sets} WHERE id_sha256 = :key"),  # noqa: S608
                {"key": key, **times},
            ).rowcount
        assert changed == 1
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- sign-in


def test_root_and_ui_lead_to_the_sign_in_page(live: LiveServer) -> None:
    browser = Browser(live)
    root = browser.get("/")
    assert root.status == 302 and root.location == "/ui/"
    dashboard = browser.get("/ui/")
    assert dashboard.status == 303 and dashboard.location == "/ui/login"
    for redirect in (root, dashboard):
        assert redirect.headers["content-security-policy"] == CSP
        assert redirect.headers["x-frame-options"] == "DENY"
    login = browser.follow(dashboard)
    assert login.status == 200 and login.h1() == "Sign in"
    field = login.one("input", id="token")
    assert field.attrs["type"] == "password" and field.attrs["name"] == "token"
    assert login.label_for("token") == "Token"
    assert login.buttons() == ["Sign in"]
    assert login.one("html").attrs["lang"] == "en"


def test_sign_in_makes_a_session_with_safe_cookie_flags_and_sign_out_ends_it(
    live: LiveServer, admin: tuple[str, str]
) -> None:
    token, token_id = admin
    browser = Browser(live)
    dashboard = browser.sign_in(token)
    assert dashboard.status == 200 and dashboard.h1() == "Dashboard"
    cookie = browser.set_cookies[-1]
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert cookie.startswith(f"{COOKIE}=")
    assert "httponly" in flags and flags["samesite"] == "SameSite=Strict"
    assert flags["path"] == "Path=/ui"
    assert "secure" not in flags  # plain http here; test_ui_tls.py shows Secure under TLS
    assert len(browser.session_id) >= 43  # 256 random bits, url-safe base64
    row = _session_row(live, browser.session_hash)
    assert row is not None and row.token_id == token_id
    # Only the hash is stored: the id itself is nowhere in the row.
    assert browser.session_id not in " ".join(str(v) for v in row)

    signed_in = browser.session_id
    out = browser.post("/ui/logout", {"csrf": dashboard.csrf()})
    assert out.status == 303 and out.location == "/ui/login?signed_out=1"
    assert COOKIE not in browser.cookies
    assert "You are signed out." in browser.follow(out).text
    assert _session_row(live, _hash(signed_in)) is None
    # The old id opens nothing any more, even if a copy of it is replayed.
    replay = Browser(live)
    replay.cookies[COOKIE] = signed_in
    assert replay.get("/ui/").location == "/ui/login"


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def test_every_sign_in_makes_a_new_session_id(live: LiveServer, admin: tuple[str, str]) -> None:
    browser = Browser(live)
    planted = "attacker-chosen-session-id-0000000000000000000"
    browser.cookies[COOKIE] = planted
    browser.sign_in(admin[0])
    first = browser.session_id
    assert first != planted
    browser.sign_in(admin[0])
    second = browser.session_id
    assert second != first
    # Signing in again ended the session the browser held before.
    assert _session_row(live, _hash(first)) is None
    assert _session_row(live, _hash(second)) is not None


def test_refused_sign_ins_say_why_without_an_oracle_and_are_audited(
    live: LiveServer,
) -> None:
    issuer, issuer_id = create_token(
        live, "issuer", name="ui-issuer", allowed_names=["*.ui.example.test"]
    )
    browser = Browser(live)
    unknown = browser.post("/ui/login", {"token": "cas_0123456789abcdef_" + "A" * 43})
    malformed = browser.post("/ui/login", {"token": "not-a-token"})
    revoked_token, revoked_id = create_token(live, "admin", name="ui-revoked")
    assert live.request("DELETE", f"/api/v1/tokens/{revoked_id}", token=live.admin_token).status
    revoked = browser.post("/ui/login", {"token": revoked_token})
    # One message for every token that is not an active one of ours: no oracle.
    texts = set()
    for page in (unknown, malformed, revoked):
        assert page.status == 401
        error = page.one("p", id="token-error").text
        texts.add(error)
        assert page.one("input", id="token").attrs["aria-invalid"] == "true"
        assert page.one("input", id="token").attrs["aria-describedby"] == "token-error"
        # The token typed is never written back into the page.
        assert "value" not in page.one("input", id="token").attrs
    assert texts == {"The token was not accepted: it is unknown, malformed, expired or revoked."}
    assert revoked_token not in revoked.text
    assert COOKIE not in browser.cookies

    refused = browser.post("/ui/login", {"token": issuer})
    assert refused.status == 403
    assert "Issuer tokens cannot sign in to the admin UI" in refused.text
    jwt = browser.post("/ui/login", {"token": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"})
    assert jwt.status == 401 and "An OIDC ID token cannot sign in" in jwt.text
    assert browser.post("/ui/login", {"token": " "}).status == 400
    assert COOKIE not in browser.cookies

    events = _events(live, action="auth.refused")
    mine = [e for e in events if e["actor"] == f"token:{issuer_id}"]
    assert len(mine) == 1 and mine[0]["target"] == "POST /ui/login"
    assert mine[0]["details"]["rule"] == "ui.role"
    # Unauthenticated attempts are counted per address, minute and process (ca_service.refusals;
    # each count is written within a second).
    total = 0
    for _ in range(50):
        total = sum(
            e["details"]["count"]
            for e in _events(live, action="auth.refused", actor="anonymous")
            if e["target"] == "POST /ui/login"
        )
        if total >= 3:
            break
        time.sleep(0.2)
    assert total >= 3


def test_a_sign_in_posted_from_another_site_is_refused(
    live: LiveServer, admin: tuple[str, str]
) -> None:
    browser = Browser(live)
    page = browser.post("/ui/login", {"token": admin[0]}, Origin="https://evil.example")
    assert page.status == 403 and COOKIE not in browser.cookies
    for headers in (
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},  # null is trusted only with same-origin
        {"Origin": live.base_url, "Sec-Fetch-Site": "same-site"},  # a sibling host
        {"Sec-Fetch-Site": "cross-site"},
    ):
        refused = browser.post("/ui/login", {"token": admin[0]}, **headers)
        assert refused.status == 403, headers
        assert "sent from another site" in refused.text and COOKIE not in browser.cookies
    same = browser.post("/ui/login", {"token": admin[0]}, Origin=live.base_url)
    assert same.status == 303 and COOKIE in browser.cookies
    # What Chromium sends for a page's own form under Referrer-Policy: no-referrer.
    chromium = Browser(live)
    page = chromium.post(
        "/ui/login", {"token": admin[0]}, Origin="null", **{"Sec-Fetch-Site": "same-origin"}
    )
    assert page.status == 303 and COOKIE in chromium.cookies
    dashboard = chromium.follow(page)
    out = chromium.post(
        "/ui/logout",
        {"csrf": dashboard.csrf()},
        Origin="null",
        **{"Sec-Fetch-Site": "same-origin"},
    )
    assert out.status == 303 and COOKIE not in chromium.cookies


def test_idle_and_absolute_expiry_end_a_session(live: LiveServer, admin: tuple[str, str]) -> None:
    now = dt.datetime.now(dt.UTC)
    idle = Browser(live)
    idle.sign_in(admin[0])
    assert idle.get("/ui/").status == 200
    _move_session(live, idle.session_hash, last_seen_at=now - dt.timedelta(minutes=29))
    assert idle.get("/ui/").status == 200  # still inside the 30 minutes
    _move_session(live, idle.session_hash, last_seen_at=now - dt.timedelta(minutes=31))
    key = idle.session_hash
    assert idle.get("/ui/").location == "/ui/login"
    assert _session_row(live, key) is None

    absolute = Browser(live)
    absolute.sign_in(admin[0])
    row = _session_row(live, absolute.session_hash)
    assert row is not None
    created = dt.datetime.fromisoformat(str(row.created_at)).replace(tzinfo=dt.UTC)
    expires = dt.datetime.fromisoformat(str(row.expires_at)).replace(tzinfo=dt.UTC)
    assert expires - created == dt.timedelta(hours=12)
    # Busy (seen just now) but past its absolute end: over.
    _move_session(live, absolute.session_hash, expires_at=now - dt.timedelta(seconds=1))
    assert absolute.get("/ui/certificates").location == "/ui/login"


def test_a_revoked_or_expired_token_ends_its_sessions_at_once(live: LiveServer) -> None:
    token, token_id = create_token(live, "admin", name="ui-short-lived")
    first, second = Browser(live), Browser(live)
    first.sign_in(token)
    second.sign_in(token)
    assert first.get("/ui/tokens").status == 200
    reply = live.request("DELETE", f"/api/v1/tokens/{token_id}", token=live.admin_token)
    assert reply.status == 200
    for browser in (first, second):
        page = browser.get("/ui/tokens")
        assert page.status == 303 and page.location == "/ui/login"

    from ..live import expire_token

    expiring, expiring_id = create_token(live, "reader", name="ui-expiring")
    browser = Browser(live)
    browser.sign_in(expiring)
    expire_token(live, expiring_id)
    assert browser.get("/ui/").location == "/ui/login"


# ---------------------------------------------------------------------------- every page


def _pages(live: LiveServer, browser: Browser, serial: str) -> dict[str, Page]:
    paths = [
        "/ui/",
        "/ui/certificates",
        "/ui/certificates?q=ui-pages",
        certificate_path("default", serial),
        "/ui/authorities",
        "/ui/tokens",
        "/ui/audit",
        "/ui/acme/eab",
        "/ui/provisioners",
        "/ui/certificates?status=nonsense",  # a 400 page
        "/ui/certificates/default/ffffffff",  # a 404 page
        "/ui/no-such-page",
    ]
    pages = {p: browser.get(p) for p in paths}
    pages["/ui/login"] = Browser(live).get("/ui/login")
    return pages


def test_every_page_has_the_security_headers_and_no_inline_script_or_style(
    live: LiveServer, admin: tuple[str, str]
) -> None:
    serial = _issue(live, "ui-pages.example.test")["serial"]
    browser = Browser(live)
    browser.sign_in(admin[0])
    pages = _pages(live, browser, serial)
    statuses = {p: page.status for p, page in pages.items()}
    assert statuses["/ui/certificates?status=nonsense"] == 400
    assert statuses["/ui/certificates/default/ffffffff"] == 404
    assert statuses["/ui/no-such-page"] == 404
    assert sum(1 for s in statuses.values() if s == 200) == 10, statuses
    for path, page in pages.items():
        h = page.headers
        assert h["content-security-policy"] == CSP, path
        assert h["x-frame-options"] == "DENY", path
        assert h["referrer-policy"] == "no-referrer", path
        assert h["x-content-type-options"] == "nosniff", path
        assert h["cache-control"] == "no-store", path
        assert page.headers["content-type"].startswith("text/html"), path
        # No inline script, no style element or attribute, no event handler attribute.
        assert page.inline_scripts == [], path
        assert all(s.attrs.get("src", "").startswith("/ui/static/") for s in page.all("script"))
        assert page.all("style") == [], path
        for element in page.elements:
            assert "style" not in element.attrs, (path, element)
            assert not any(a.startswith("on") for a in element.attrs), (path, element)
        _check_markup(path, page)
    # The static files they load are served by the same app.
    for asset in ("/ui/static/ui.css", "/ui/static/ui.js"):
        reply = browser.get(asset)
        assert reply.status == 200 and reply.headers["x-content-type-options"] == "nosniff"


def _check_markup(path: str, page: Page) -> None:
    """The accessibility markup of item 7 that HTML alone shows."""
    assert page.one("html").attrs.get("lang") == "en", path
    assert page.all("title")[0].text.strip().endswith("· ca-service"), path  # <head>'s
    assert len(page.all("h1")) == 1, path
    levels = [int(e.tag[1]) for e in page.elements if re.fullmatch(r"h[1-6]", e.tag)]
    assert levels[0] == 1 and all(b - a <= 1 for a, b in itertools.pairwise(levels)), (path, levels)
    assert page.links("Skip to main content") == ["#main"], path
    assert page.all("main", id="main"), path
    ids = {e.attrs["id"] for e in page.elements if "id" in e.attrs}
    labelled = {e.attrs["for"] for e in page.all("label")}
    for control in page.elements:
        if control.tag in ("input", "select", "textarea") and control.attrs.get("type") != "hidden":
            assert control.attrs.get("id") in labelled, (path, control)
        for ref in control.attrs.get("aria-describedby", "").split():
            assert ref in ids, (path, control)
    for th in page.all("th"):
        assert th.attrs.get("scope") in ("col", "row"), (path, th)


def test_the_sign_in_token_is_never_in_a_url_a_page_or_the_log(live: LiveServer) -> None:
    token, _ = create_token(live, "admin", name="ui-secret-check")
    serial = _issue(live, "ui-secret.example.test")["serial"]
    browser = Browser(live)
    first = browser.post("/ui/login", {"token": token})
    assert token not in first.location and token not in first.text
    pages = _pages(live, browser, serial)
    for path, page in pages.items():
        assert token not in page.text, path
        assert token.split("_", 2)[2] not in page.text, path
    log = live.log()
    assert token not in log and token.split("_", 2)[2] not in log
    assert browser.session_id not in log
    assert '"POST /ui/login HTTP/1.1" 303' in log  # the access log is there, without it


# ---------------------------------------------------------------------------- dashboard


def test_the_dashboard_counts_charts_and_publishing(
    live: LiveServer, admin: tuple[str, str], reader: tuple[str, str]
) -> None:
    soon = _issue(live, "ui-dash-soon.example.test", validity_days=3)
    browser = Browser(live)
    page = browser.sign_in(admin[0])
    row = [e for e in page.all("th", scope="row") if e.text.strip() == "default"]
    assert row, "the default authority has a row of counts"
    valid = len(list_all(live, "/api/v1/certificates?status=valid&authority=default"))
    assert f'status=valid">{valid}</a>' in page.text
    svg = page.one("svg", **{"class": "bars"})
    assert svg.attrs["role"] == "img"
    title, desc = page.one("title", id="expiry-title"), page.one("desc", id="expiry-desc")
    assert "next 90 days" in title.text and "expire in the next 90 days" in desc.text
    assert page.one("figcaption").text.strip() == desc.text.strip()
    day = soon["not_after"][:10]
    assert re.search(rf"<title>{day}: [1-9][0-9]* certificates?</title>", page.text)
    # The text alternative: a table with one row a week, summing to the chart's total.
    weeks = [e for e in page.all("caption") if "per week" in e.text]
    assert weeks
    assert "CRL number" in page.text and "OCSP responder" in page.text
    assert "Latest audit events" in page.text and "certificate.issue" in page.text
    # A reader sees the counts but not the audit log (as GET /api/v1/audit).
    reader_page = Browser(live).sign_in(reader[0])
    assert "Certificates by status" in reader_page.text
    assert "Latest audit events" not in reader_page.text


# ---------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def catalog(live: LiveServer) -> list[dict[str, Any]]:
    """55 certificates named list-NN.ui.example.test (more than a page of 50)."""
    return [_issue(live, f"list-{i:02d}.ui.example.test") for i in range(55)]


def _rows(page: Page) -> list[str]:
    return [e.text.strip() for e in page.all("th", scope="row") if e.text.strip()]


def test_search_by_name_serial_and_fingerprint(
    live: LiveServer, reader: tuple[str, str], catalog: list[dict[str, Any]]
) -> None:
    browser = Browser(live)
    browser.sign_in(reader[0])
    form = browser.get("/ui/certificates")
    assert form.label_for("q") == "Search"
    search = form.one("input", id="q")
    assert search.attrs["name"] == "q"
    assert [f.attrs.get("method") for f in form.all("form") if f.attrs.get("role") == "search"] == [
        "get"
    ]
    target = catalog[17]
    by_name = browser.get("/ui/certificates?q=list-17.ui")
    assert _rows(by_name) == ["list-17.ui.example.test"]
    colons = ":".join(re.findall("..", target["serial"].upper().rjust(40, "0")))
    by_serial = browser.get(f"/ui/certificates?q={quote(colons)}")
    assert _rows(by_serial) == ["list-17.ui.example.test"]
    fingerprint = _api_certificate(live, target["serial"])["fingerprint_sha256"]
    by_fp = browser.get(f"/ui/certificates?q={fingerprint}")
    assert _rows(by_fp) == ["list-17.ui.example.test"]
    # The row links to the certificate's page.
    assert by_fp.links("list-17.ui.example.test") == [certificate_path("default", target["serial"])]


def test_filters_sorting_and_keyset_pages(
    live: LiveServer, admin: tuple[str, str], catalog: list[dict[str, Any]]
) -> None:
    browser = Browser(live)
    browser.sign_in(admin[0])
    first = browser.get("/ui/certificates?q=.ui.example.test&sort=issued")
    names = _rows(first)
    assert len(names) == 50
    (next_url,) = first.links("Next page")
    params = parse_qs(urlsplit(next_url).query)
    assert params["q"] == [".ui.example.test"] and params["cursor"]
    second = browser.get(next_url)
    rest = _rows(second)
    assert second.links("First page") and not set(rest) & set(names)
    listed = set(names) | set(rest)
    assert {c["common_name"] for c in catalog} <= listed

    for name, days in (("exp-a", 40), ("exp-b", 20), ("exp-c", 60)):
        _issue(live, f"{name}.ui.example.test", validity_days=days)
    by_expiry = _rows(browser.get("/ui/certificates?q=exp-&sort=expiry"))
    assert by_expiry == [f"exp-{x}.ui.example.test" for x in "bac"]
    by_issue = _rows(browser.get("/ui/certificates?q=exp-&sort=issued"))
    assert by_issue == [f"exp-{x}.ui.example.test" for x in "cba"]

    short = _issue(live, "short.ui.example.test", validity_days=2)
    within = browser.get("/ui/certificates?expiring=3&q=.ui.example.test")
    assert "short.ui.example.test" in _rows(within)
    assert not any(n.startswith("list-") for n in _rows(within))
    live.request(
        "POST",
        f"/api/v1/certificates/{short['serial']}/revoke",
        token=live.admin_token,
        body={"reason": "superseded"},
    )
    revoked = browser.get("/ui/certificates?status=revoked&q=short.ui")
    assert _rows(revoked) == ["short.ui.example.test"]
    assert _rows(browser.get("/ui/certificates?status=valid&q=short.ui")) == []
    by_kind = browser.get("/ui/certificates?requester=cli&q=list-01")
    assert _rows(by_kind) == []
    by_token = browser.get("/ui/certificates?requester=token&q=list-01")
    assert _rows(by_token) == ["list-01.ui.example.test"]
    profile = browser.get("/ui/certificates?profile=client&q=list-01")
    assert _rows(profile) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("expiring=-1", "expiring"),
        ("expiring=abc", "expiring"),
        ("sort=sideways", "sort"),
        ("authority=nope", "authority"),
        ("profile=nope", "profile"),
        ("requester=a%20b", "requester"),
        ("cursor=garbage", "cursor"),
        ("q=xy", "q"),
    ],
)
def test_bad_filters_are_a_400_page_with_the_error_at_its_field(
    live: LiveServer, reader: tuple[str, str], query: str, field: str
) -> None:
    browser = Browser(live)
    browser.sign_in(reader[0])
    page = browser.get(f"/ui/certificates?{query}")
    assert page.status == 400, page.text[:300]
    assert page.one("p", id=f"{field}-error").text.strip()
    if field != "cursor":
        control = page.one("input" if field in ("q", "expiring") else "select", id=field)
        assert control.attrs["aria-describedby"] == f"{field}-error"


def test_the_certificate_page_shows_everything_and_downloads(
    live: LiveServer, admin: tuple[str, str], openssl: str, tmp_path: Path
) -> None:
    issued = _issue(live, "detail.ui.example.test", sans=["detail.ui.example.test", "127.0.0.1"])
    serial = issued["serial"]
    renewed = live.request(
        "POST", f"/api/v1/certificates/{serial}/renew", token=live.admin_token, body={}
    )
    assert renewed.status == 201
    browser = Browser(live)
    browser.sign_in(admin[0])
    page = browser.get(certificate_path("default", serial))
    assert page.status == 200 and page.h1() == "Certificate detail.ui.example.test"
    cert = x509.load_pem_x509_certificate(issued["certificate"].encode())
    for ext in cert.extensions:
        assert ext.oid.dotted_string in page.text, ext.oid
    for text in ("DNS: detail.ui.example.test", "IP: 127.0.0.1", "serverAuth", "URI: http://"):
        assert text in page.text
    assert issued["fingerprint_sha256"].upper() in page.text.replace(":", "")
    validity = page.one("svg", **{"class": "validity current"})
    assert validity.attrs["role"] == "img" and page.one("desc", id="validity-desc").text
    assert "default Issuing CA" in page.text and "(root)" in page.text
    successor = renewed.json["serial"]
    assert page.links(successor) == [certificate_path("default", successor)]
    assert "certificate.issue" in page.text and "certificate.renew" in page.text
    pem = browser.get(page.links("Certificate (PEM)")[0])
    der = browser.get(page.links("Certificate (DER)")[0])
    chain = browser.get(page.links("Certificate and chain (PEM)")[0])
    assert pem.headers["content-type"] == "application/x-pem-file"
    assert x509.load_pem_x509_certificate(pem.body) == cert
    assert x509.load_der_x509_certificate(der.body) == cert
    assert chain.body.count(b"BEGIN CERTIFICATE") == 2
    (tmp_path / "c.der").write_bytes(der.body)
    out = subprocess.run(
        [openssl, "x509", "-inform", "DER", "-in", str(tmp_path / "c.der"), "-noout", "-serial"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert (
        out.stdout.strip().lower() == f"serial={serial.rjust(len(serial) + len(serial) % 2, '0')}"
    )


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/ui/certificates/default/ffffffff", 404),
        ("/ui/certificates/nope/0a0a", 404),
        ("/ui/certificates/default/not-hex", 400),
        ("/ui/certificates/default/ffffffff/certificate.pem", 404),
        ("/ui/audit?since=yesterday", 400),
        ("/ui/audit?cursor=x", 400),
        ("/ui/certificates?q=%00", 400),
        ("/ui/anything/else", 404),
    ],
)
def test_bad_addresses_answer_4xx_pages(
    live: LiveServer, admin: tuple[str, str], path: str, status: int
) -> None:
    browser = Browser(live)
    browser.sign_in(admin[0])
    page = browser.get(path)
    assert page.status == status, page.text[:300]
    assert page.headers["content-type"].startswith("text/html")
    assert "Traceback" not in page.text and page.h1()


# ---------------------------------------------------------------------------- revocation


def _revoke(browser: Browser, serial: str, reason: str) -> Page:
    page = browser.get(certificate_path("default", serial))
    form = {"csrf": page.csrf(), "reason": reason}
    confirm = browser.post(f"{certificate_path('default', serial)}/revoke", form)
    assert confirm.status == 200 and confirm.h1() == "Confirm revocation"
    done = browser.post(f"{certificate_path('default', serial)}/revoke", {**form, "confirm": "yes"})
    assert done.status == 303
    return browser.follow(done)


def test_revocation_asks_first_then_shows_the_crl_that_lists_it(
    live: LiveServer, admin: tuple[str, str], openssl: str, tmp_path: Path
) -> None:
    issued = _issue(live, "revoke-me.ui.example.test")
    serial = issued["serial"]
    browser = Browser(live)
    browser.sign_in(admin[0])
    page = browser.get(certificate_path("default", serial))
    assert page.label_for("reason") == "Reason"
    reasons = [e.attrs["value"] for e in page.all("option") if e.attrs.get("value")]
    assert {"keyCompromise", "certificateHold", "superseded", "unspecified"} <= set(reasons)
    assert "Revoke" in page.buttons()

    form = {"csrf": page.csrf(), "reason": "keyCompromise"}
    confirm = browser.post(f"{certificate_path('default', serial)}/revoke", form)
    assert confirm.status == 200
    assert confirm.one("strong", id="confirm-name").text == "revoke-me.ui.example.test"
    assert confirm.one("strong", id="confirm-serial").text == serial
    assert "Confirm revocation" in confirm.buttons()
    # Asking is not doing: still valid.
    assert _api_certificate(live, serial)["status"] == "valid"

    done = browser.post(f"{certificate_path('default', serial)}/revoke", {**form, "confirm": "yes"})
    assert done.status == 303
    result = browser.follow(done)
    assert "Revoked (keyCompromise)" in result.text
    number = int(re.search(r"Listed in CRL number (\d+)", result.text)[1])  # type: ignore[index]
    assert _api_certificate(live, serial)["status"] == "revoked"
    events = _events(live, action="certificate.revoke")
    (event,) = [e for e in events if e["target"] == f"default/{serial}"]
    assert event["actor"] == f"token:{admin[1]}" and event["details"]["reason"] == "keyCompromise"

    # The CRL at the certificate's own CRL Distribution Point lists it, under that number.
    cert = x509.load_pem_x509_certificate(issued["certificate"].encode())
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = cdp[0].full_name[0].value  # type: ignore[index]
    crl = live.request("GET", urlsplit(url).path)
    assert crl.status == 200
    (tmp_path / "crl.der").write_bytes(crl.body)
    text = subprocess.run(
        [openssl, "crl", "-inform", "DER", "-in", str(tmp_path / "crl.der"), "-noout", "-text"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert re.search(rf"X509v3 CRL Number: *\n *{number}\b", text), text[:600]
    listed = re.findall(r"Serial Number: ([0-9A-F]+)", text)
    assert serial.upper().lstrip("0") in [s.lstrip("0") for s in listed]
    assert "Key Compromise" in text
    # No revoke control on a revoked certificate.
    assert "Revoke" not in browser.get(certificate_path("default", serial)).buttons()


def test_a_hold_can_be_released(live: LiveServer, admin: tuple[str, str]) -> None:
    serial = _issue(live, "hold.ui.example.test")["serial"]
    browser = Browser(live)
    browser.sign_in(admin[0])
    held = _revoke(browser, serial, "certificateHold")
    assert "On hold" in held.text and "Release hold" in held.buttons()
    assert _api_certificate(live, serial)["revocation_reason"] == "certificateHold"
    released = browser.post(f"{certificate_path('default', serial)}/release", {"csrf": held.csrf()})
    assert released.status == 303
    page = browser.follow(released)
    assert "The hold is released" in page.text and "no longer lists it" in page.text
    assert _api_certificate(live, serial)["status"] == "valid"
    assert "Release hold" not in page.buttons() and "Revoke" in page.buttons()


def test_posts_without_the_csrf_token_are_refused_and_change_nothing(
    live: LiveServer, admin: tuple[str, str]
) -> None:
    serial = _issue(live, "csrf.ui.example.test")["serial"]
    browser = Browser(live)
    page = browser.sign_in(admin[0])
    path = f"{certificate_path('default', serial)}/revoke"
    form = {"reason": "keyCompromise", "confirm": "yes"}
    missing = browser.post(path, form)
    wrong = browser.post(path, {**form, "csrf": page.csrf()[:-2] + "xx"})
    for refused in (missing, wrong):
        assert refused.status == 403 and refused.h1() == "Forbidden"
        assert "security token is missing or out of date" in refused.text
    assert _api_certificate(live, serial)["status"] == "valid"
    # Nor a token made, nor a session ended.
    before = len(_tokens(live))
    assert browser.post("/ui/tokens", {"name": "x", "role": "reader"}).status == 403
    assert len(_tokens(live)) == before
    assert browser.post("/ui/logout", {}).status == 403
    assert browser.get("/ui/").status == 200
    # Nor with the right token from a page of another site (the browser says so in Origin).
    cross = browser.post(path, {**form, "csrf": page.csrf()}, Origin="https://evil.example")
    assert cross.status == 403 and "sent from another site" in cross.text
    assert _api_certificate(live, serial)["status"] == "valid"
    # The CSRF token of another session does not do either.
    other = Browser(live).sign_in(admin[0])
    assert browser.post(path, {**form, "csrf": other.csrf()}).status == 403
    assert _api_certificate(live, serial)["status"] == "valid"


def test_a_reader_sees_no_admin_control_and_a_forged_post_is_refused_and_audited(
    live: LiveServer, reader: tuple[str, str]
) -> None:
    serial = _issue(live, "reader.ui.example.test")["serial"]
    browser = Browser(live)
    dashboard = browser.sign_in(reader[0])
    nav = [e.text for e in dashboard.all("a")]
    assert "Tokens" not in nav and "Audit log" not in nav
    page = browser.get(certificate_path("default", serial))
    assert page.status == 200
    assert page.buttons() == ["Sign out"]
    assert not page.all("select", id="reason")
    assert all("/revoke" not in a and "/release" not in a for a in page.form_actions())
    for admin_page in ("/ui/tokens", "/ui/audit", "/ui/acme/eab", "/ui/provisioners"):
        assert browser.get(admin_page).status == 403, admin_page
    path = f"{certificate_path('default', serial)}/revoke"
    forged = browser.post(path, {"csrf": page.csrf(), "reason": "keyCompromise", "confirm": "yes"})
    assert forged.status == 403 and "needs the admin role" in forged.text
    assert _api_certificate(live, serial)["status"] == "valid"
    refusals = [
        e
        for e in _events(live, action="auth.refused", actor=f"token:{reader[1]}")
        if e["target"] == f"POST {path}"
    ]
    assert len(refusals) == 1 and refusals[0]["details"]["rule"] == "caller.role"
    made = browser.post("/ui/tokens", {"csrf": page.csrf(), "name": "x", "role": "admin"})
    assert made.status == 403


# ---------------------------------------------------------------------------- admin pages


def test_a_token_made_in_the_ui_shows_its_secret_once(
    live: LiveServer, admin: tuple[str, str]
) -> None:
    browser = Browser(live)
    browser.sign_in(admin[0])
    page = browser.get("/ui/tokens")
    assert page.label_for("name") == "Name" and page.label_for("role") == "Role"
    form = {
        "csrf": page.csrf(),
        "name": "ui-made-ci",
        "role": "issuer",
        "allowed_names": "*.made.example.test\n*.other.example.test",
        "max_validity_days": "30",
        "expires_in_days": "7",
        "profiles": "server",
    }
    made = browser.post("/ui/tokens", form)
    assert made.status == 200 and made.h1() == "Token created"
    assert made.headers["cache-control"] == "no-store"
    (secret,) = re.findall(r"cas_[a-z0-9]{16}_[A-Za-z0-9_-]{43}", made.text)
    token_id = secret.split("_")[1]
    # It works on the API, with the policy given in the form.
    reply = live.request(
        "POST",
        "/api/v1/certificates",
        token=secret,
        body={"common_name": "a.made.example.test", "validity_days": 30},
    )
    assert reply.status == 201, reply.body
    outside = live.request(
        "POST", "/api/v1/certificates", token=secret, body={"common_name": "x.example.test"}
    )
    assert outside.status == 403
    # Listed, never shown again.
    listing = browser.get("/ui/tokens")
    assert "ui-made-ci" in listing.text and token_id in listing.text
    assert secret not in listing.text and secret.split("_", 2)[2] not in listing.text
    (api_record,) = [t for t in _tokens(live) if t["id"] == token_id]
    assert api_record["created_by"] == f"token:{admin[1]}"
    assert api_record["policy"]["max_validity_days"] == 30

    nul = browser.post("/ui/tokens", {"csrf": page.csrf(), "name": "a\x00b", "role": "reader"})
    assert nul.status == 400 and "NUL" in nul.text
    assert browser.post("/ui/login", {"token": "cas_\x00"}).status == 400
    bad = browser.post("/ui/tokens", {"csrf": page.csrf(), "name": "", "role": "issuer"})
    assert bad.status == 400 and bad.one("p", id="name-error").text
    nameless = browser.post("/ui/tokens", {"csrf": page.csrf(), "name": "n", "role": "issuer"})
    assert (
        nameless.status == 400
        and "allowed name" in nameless.one("p", id="allowed_names-error").text
    )
    typo = browser.post(
        "/ui/tokens",
        {"csrf": page.csrf(), "name": "n", "role": "reader", "authorities": "no-such-ca"},
    )
    assert typo.status == 400
    assert "unknown authority 'no-such-ca'" in typo.one("p", id="authorities-error").text

    revoked = browser.post(f"/ui/tokens/{token_id}/revoke", {"csrf": page.csrf()})
    assert revoked.status == 303
    assert f"Token {token_id} is revoked." in browser.follow(revoked).text
    again = live.request("GET", "/api/v1/certificates", token=secret)
    assert again.status == 401
    unknown = browser.post("/ui/tokens/ffffffffffffffff/revoke", {"csrf": page.csrf()})
    assert unknown.status == 404


def test_authorities_audit_eab_and_provisioners_pages(
    live: LiveServer, admin: tuple[str, str]
) -> None:
    browser = Browser(live)
    browser.sign_in(admin[0])
    authorities = browser.get("/ui/authorities")
    assert authorities.status == 200
    for name in ("default", "default-root"):
        assert authorities.one("h2", id=f"authority-{name}")
        assert f"/ca/{name}/chain.pem" in authorities.links("Chain, root included (PEM)")
    chain = live.request("GET", "/ca/default/chain.pem")
    assert chain.status == 200 and chain.body.count(b"BEGIN CERTIFICATE") == 2

    audit = browser.get("/ui/audit?action=token.create")
    actions = {e.text.strip() for e in audit.all("td") if e.text.strip() == "token.create"}
    assert actions == {"token.create"}
    assert "certificate.issue" not in audit.text
    for control in ("actor", "action", "target", "since", "until"):
        assert audit.label_for(control)
    one = browser.get("/ui/audit?action=certificate.issue")  # more than 50 issuances
    (next_url,) = one.links("Next page")
    assert "cursor=" in next_url and browser.get(next_url).status == 200
    future = browser.get("/ui/audit?since=2999-01-01")
    assert "No events." in future.text

    eab = live.request(
        "POST",
        "/api/v1/acme/eab",
        token=live.admin_token,
        body={"name": "ui-eab", "allowed_names": ["*.eab.example.test"]},
    )
    assert eab.status == 201, eab.body
    keys = browser.get("/ui/acme/eab")
    assert "ui-eab" in keys.text and eab.json["kid"] in keys.text
    assert eab.json["hmac_key"] not in keys.text
    assert browser.get("/ui/provisioners").status == 200


def test_no_traceback_in_the_server_log(live: LiveServer) -> None:
    """Last in the module: everything above answered without an unhandled error."""
    assert server_tracebacks(live) == 0, live.log()[-3000:]
