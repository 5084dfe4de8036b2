"""The admin UI's core flows once more, on PostgreSQL and over HTTPS (`serve --tls`): the
sessions table, the CSRF checks and revocation behave the same on the other store, and under
TLS the session cookie is Secure.

The full set of UI checks runs on SQLite in test_ui_http.py; this is the journey of issue 13
item 8 through HTTP: sign in, find one certificate, open it, revoke it after the confirmation,
find its serial in the CRL fetched from its CRL Distribution Point, a reader without controls,
a POST without the CSRF token refused, a revoked token's session ended, sign out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from ..conftest import database
from ..live import LiveServer, create_token, issue, server_tracebacks, start_server
from .client import COOKIE, Browser, certificate_path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("ui-pg-tls")
    with database("postgresql", base) as url:
        server = start_server(base / "data", url, tls=True)
        try:
            yield server
        finally:
            server.stop()


def test_the_core_flows_on_postgresql_over_https(live: LiveServer, tmp_path: Path) -> None:
    assert live.base_url.startswith("https://")
    admin, _ = create_token(live, "admin", name="pg-admin")
    reader, _ = create_token(live, "reader", name="pg-reader")
    for i in range(12):
        issue(live, common_name=f"pg-{i:02d}.example.test")
    target = issue(live, common_name="needle.pg.example.test").json

    browser = Browser(live)
    browser.sign_in(admin)
    cookie = browser.set_cookies[-1]
    assert "; Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie

    found = browser.get("/ui/certificates?q=needle")
    assert found.links("needle.pg.example.test") == [certificate_path("default", target["serial"])]
    page = browser.get(certificate_path("default", target["serial"]))
    path = certificate_path("default", target["serial"]) + "/revoke"
    assert browser.post(path, {"reason": "keyCompromise", "confirm": "yes"}).status == 403
    confirm = browser.post(path, {"csrf": page.csrf(), "reason": "keyCompromise"})
    assert confirm.one("strong", id="confirm-serial").text == target["serial"]
    done = browser.post(path, {"csrf": page.csrf(), "reason": "keyCompromise", "confirm": "yes"})
    result = browser.follow(done)
    match = re.search(r"Listed in CRL number (\d+)", result.text)
    assert match, result.text[:2000]

    cert = x509.load_pem_x509_certificate(target["certificate"].encode())
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = cdp[0].full_name[0].value  # type: ignore[index]
    crl_reply = live.request("GET", urlsplit(url).path)
    crl = x509.load_der_x509_crl(crl_reply.body)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == int(match[1])
    entry = crl.get_revoked_certificate_by_serial_number(int(target["serial"], 16))
    assert entry is not None

    other = issue(live, common_name="other.pg.example.test").json
    reading = Browser(live)
    reading.sign_in(reader)
    view = reading.get(certificate_path("default", other["serial"]))
    assert view.buttons() == ["Sign out"]
    forged = reading.post(
        certificate_path("default", other["serial"]) + "/revoke",
        {"csrf": view.csrf(), "reason": "keyCompromise", "confirm": "yes"},
    )
    assert forged.status == 403

    short, short_id = create_token(live, "admin", name="pg-short")
    ending = Browser(live)
    ending.sign_in(short)
    assert live.request("DELETE", f"/api/v1/tokens/{short_id}", token=live.admin_token).status
    assert ending.get("/ui/").location == "/ui/login"

    out = browser.post("/ui/logout", {"csrf": page.csrf()})
    assert out.status == 303 and COOKIE not in browser.cookies
    assert browser.get("/ui/").location == "/ui/login"
    assert server_tracebacks(live) == 0
