"""The admin UI in a real browser (issue 13 items 7 and 8): Debian's Chromium driven by
Playwright against a real gunicorn, over a store of a few thousand real certificates.

An admin signs in, finds one certificate among them with the Search box, revokes it with
keyCompromise after the confirmation step and sees it revoked, and its serial is in the CRL
fetched from the certificate's own CRL Distribution Point. A reader sees no Revoke control and a
POST without the CSRF token is refused; Sign out ends the session (its old cookie is worth
nothing). The same flow works with JavaScript off, Tab reaches the controls with a visible
focus ring, and axe-core finds no serious or critical violation on any page.

Screenshots of the dashboard, the list and a detail page (before and after revocation), and of
every page axe-core checked, go to ``CA_UI_SCREENSHOTS`` (or a temporary directory); the run
prints where. docs/ui-dashboard.png and docs/ui-certificate.png are two of them.
"""

from __future__ import annotations

import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from ca_service.config import load_settings
from ca_service.domain import Actor
from ca_service.wiring import build_authority

from ..conftest import live_server
from ..live import LiveServer, create_token, server_tracebacks
from .browser import (
    axe_violations,
    check_tools,
    chromium,
    describe,
    failing,
    focus_ring,
    visible_ring,
)

if TYPE_CHECKING:  # annotations only: playwright is imported after check_tools() found it
    from playwright.sync_api import Browser, BrowserContext, Page

# A few thousand real certificates (issued in-process: about 5 ms each), so that Search really
# has to find one among many and the list really paginates.
FLEET_SIZE = 3000
POPULATE = Actor(identity="test:ui-populate")
# The certificates each test acts on, by index: disjoint, so the tests do not depend on order.
TARGET, NO_JS, CONFIRM_ONLY, CSRF_VICTIM = 1717, 2222, 333, 444
TIMEOUT_MS = 15_000
# SQLite by default: what the browser sees does not depend on the store, which the UI's HTTP
# tests (test_ui_http.py) run on both; CA_UI_BROWSER_BACKEND=postgresql runs this module there.
BACKEND = os.environ.get("CA_UI_BROWSER_BACKEND", "sqlite")

# Starting the server and issuing the fleet alone take 20 s or more; the module about 70 s.
pytestmark = pytest.mark.slow


def fleet_name(i: int) -> str:
    """Fixed width, so that no name is a prefix of another and a search finds exactly one."""
    return f"svc-{i:05d}.fleet.example.test"


@dataclass
class Fleet:
    live: LiveServer
    admin: str
    reader: str
    serials: dict[int, str] = field(default_factory=dict)
    pems: dict[int, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.live.base_url + path


def populate(live: LiveServer, count: int, keep: set[int]) -> tuple[dict[int, str], dict[int, str]]:
    """Issue ``count`` certificates through an in-process Core on the server's own store and
    keys; the serials of all and the PEMs of those in ``keep``."""
    ca = build_authority(load_settings(live.env))
    serials: dict[int, str] = {}
    pems: dict[int, str] = {}
    try:
        ca.load_keys()
        for i in range(count):
            name = fleet_name(i)
            # Lifetimes of 5 to 89 days: the dashboard's 90-day expiry chart has something to draw.
            issued = ca.issue_with_new_key(
                POPULATE, common_name=name, names=[name], validity_days=5 + i % 85
            )
            serials[i] = issued.record.serial
            if i in keep:
                pems[i] = issued.certificate_pem
    finally:
        ca.db.dispose()
    return serials, pems


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    check_tools()
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    check_tools()  # before the expensive part: a missing browser says so at once
    with live_server(BACKEND, tmp_path_factory.mktemp("ui-live")) as live:
        admin, _ = create_token(live, "admin", name="ui admin")
        reader, _ = create_token(live, "reader", name="ui reader")
        keep = {TARGET, NO_JS, CONFIRM_ONLY, CSRF_VICTIM}
        serials, pems = populate(live, FLEET_SIZE, keep)
        yield Fleet(live, admin, reader, serials, pems)
        assert server_tracebacks(live) == 0, live.log()[-4000:]


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Where screenshots go: ``CA_UI_SCREENSHOTS``, else a temporary directory; said aloud."""
    where = os.environ.get("CA_UI_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nui screenshots: {path}")
    return path


# ---------------------------------------------------------------------------- page helpers


def new_context(browser: Browser, **options: object) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    return context


def watch_csp(page: Page) -> list[str]:
    """Console messages about Content-Security-Policy violations: the UI's own pages must not
    break their own policy (an inline script or style would show here)."""
    seen: list[str] = []
    page.on(
        "console",
        lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return seen


def sign_in(page: Page, fleet: Fleet, token: str) -> None:
    """Through the login page, as a person would: the Token field and the Sign in button."""
    from playwright.sync_api import expect

    page.goto(fleet.url("/ui/"))
    page.get_by_label("Token", exact=True).fill(token)
    with page.expect_request(lambda r: r.method == "POST") as posted:
        page.get_by_role("button", name="Sign in").click()
    try:
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    except AssertionError as exc:
        # Say why: a refusal of the browser's own form is a server bug, not a slow page.
        sent = posted.value.all_headers()
        headers = {k: v for k, v in sent.items() if k.startswith(("origin", "sec-fetch"))}
        raise AssertionError(
            f"signing in failed; the browser sent {headers}; the page says:\n"
            + page.locator("main").inner_text()
        ) from exc


def open_certificate(page: Page, fleet: Fleet, i: int) -> None:
    """From the certificates list, Search by name, then follow the one matching row."""
    from playwright.sync_api import expect

    page.get_by_role("link", name="Certificates", exact=True).first.click()
    name = fleet_name(i)
    page.get_by_label("Search").fill(name)
    page.get_by_label("Search").press("Enter")
    page.wait_for_url(re.compile(r"[?&]q="))
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(1)
    rows.get_by_role("link", name=name).first.click()
    expect(page.get_by_role("heading", name=re.compile(re.escape(name)))).to_be_visible()


def shows_serial(text: str, serial: str) -> bool:
    """The page names this serial, with or without colons, in either case."""
    return serial.lower() in text.lower().replace(":", "")


def revoke_on_page(page: Page, fleet: Fleet, i: int, reason: str, *, confirm: bool) -> None:
    """The detail page's Revoke control: choose the Reason, then the confirmation step that
    names the certificate; confirm it or stop there."""
    page.get_by_label("Reason").select_option(reason)
    page.get_by_role("button", name="Revoke").click()
    # The confirmation step names the certificate: its common name and its serial.
    body = page.locator("main").inner_text()
    assert fleet_name(i) in body, body
    assert shows_serial(body, fleet.serials[i]), body
    if confirm:
        page.get_by_role("button", name=re.compile(r"^(confirm|revoke)", re.I)).click()


def api_status(fleet: Fleet, i: int) -> tuple[str, str | None]:
    reply = fleet.live.request("GET", f"/api/v1/certificates/{fleet.serials[i]}", token=fleet.admin)
    assert reply.status == 200, reply.body[:300]
    return reply.json["status"], reply.json["revocation_reason"]


def crl_from_distribution_point(pem: str) -> tuple[str, x509.CertificateRevocationList]:
    """The CRL at the URL in the certificate's own CRL Distribution Points extension."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    cdp = cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS).value
    urls = [
        name.value
        for point in cdp
        for name in point.full_name or ()
        if isinstance(name, x509.UniformResourceIdentifier)
    ]
    assert len(urls) == 1, urls
    url = urls[0]
    assert url.startswith("http://127.0.0.1:"), url  # loopback only
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (http loopback)
        data = resp.read()
    if data.startswith(b"-----BEGIN"):
        return url, x509.load_pem_x509_crl(data)
    return url, x509.load_der_x509_crl(data)


# ---------------------------------------------------------------------------- the tests


def test_admin_finds_one_among_thousands_and_revokes_it(
    browser: Browser, fleet: Fleet, shots: Path
) -> None:
    """Sign in, Search, open, revoke with keyCompromise after confirming; the page shows it
    revoked with the CRL number that lists it, and the CRL from its CDP lists its serial."""
    from playwright.sync_api import expect

    context = new_context(browser)
    page = context.new_page()
    csp = watch_csp(page)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    try:
        sign_in(page, fleet, fleet.admin)
        page.screenshot(path=shots / "dashboard.png", full_page=True)
        page.get_by_role("link", name="Certificates", exact=True).first.click()
        expect(page.get_by_label("Search")).to_be_visible()
        page.screenshot(path=shots / "certificates.png", full_page=True)

        open_certificate(page, fleet, TARGET)
        # ui.js ran (from 'self', as the CSP allows): it adds a Copy button after the serial.
        expect(page.get_by_role("button", name=re.compile(r"^Copy"))).not_to_have_count(0)
        page.screenshot(path=shots / "certificate.png", full_page=True)
        assert api_status(fleet, TARGET) == ("valid", None)
        revoke_on_page(page, fleet, TARGET, "keyCompromise", confirm=True)

        body = page.locator("main").inner_text()
        assert re.search(r"\brevoked\b", body, re.I), body
        assert re.search(r"key\s*compromise", body, re.I), body
        number = re.search(r"CRL number\D{0,5}(\d+)", body, re.I)
        assert number is not None, f"the page does not name the CRL that lists it:\n{body}"
        assert page.get_by_role("button", name="Revoke").count() == 0
        assert api_status(fleet, TARGET) == ("revoked", "keyCompromise")
        page.screenshot(path=shots / "certificate-revoked.png", full_page=True)

        url, crl = crl_from_distribution_point(fleet.pems[TARGET])
        serial = int(fleet.serials[TARGET], 16)
        entry = crl.get_revoked_certificate_by_serial_number(serial)
        assert entry is not None, f"{fleet.serials[TARGET]} is not in the CRL at {url}"
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason == x509.ReasonFlags.key_compromise
        crl_number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        assert crl_number >= int(number.group(1)), (crl_number, number.group(0))
        assert csp == [], csp
        assert urls and not [u for u in urls if fleet.admin in u], "the token went into a URL"
    finally:
        context.close()


def test_reader_sees_no_revoke_control_and_forged_posts_are_refused(
    browser: Browser, fleet: Fleet
) -> None:
    """A reader's detail page has no Reason or Revoke; a POST to the revoke form's action
    without the CSRF token (admin or reader) and a reader's POST with it are all 403, and the
    certificate stays valid."""
    admin_ctx, reader_ctx = new_context(browser), new_context(browser)
    try:
        admin = admin_ctx.new_page()
        sign_in(admin, fleet, fleet.admin)
        open_certificate(admin, fleet, CSRF_VICTIM)
        form = admin.locator("form", has=admin.get_by_label("Reason"))
        action = form.get_attribute("action") or admin.url
        target = admin.url if action.startswith("?") else action
        target = target if target.startswith("http") else fleet.url(target)
        # Everything the confirmation step sends but the CSRF token: were it not checked, this
        # POST would revoke.
        fields = {"reason": "keyCompromise", "confirm": "yes"}

        forged = admin.request.post(target, form=fields, max_redirects=0)
        assert forged.status == 403, (forged.status, forged.text()[:500])
        assert "Traceback" not in forged.text()

        reader = reader_ctx.new_page()
        sign_in(reader, fleet, fleet.reader)
        open_certificate(reader, fleet, CSRF_VICTIM)
        assert reader.get_by_role("button", name="Revoke").count() == 0
        assert reader.get_by_label("Reason").count() == 0
        forged = reader.request.post(target, form=fields, max_redirects=0)
        assert forged.status == 403, (forged.status, forged.text()[:500])
        # Even with the reader's own valid CSRF token (from the Sign out form): still 403.
        token_input = reader.locator("form input[type=hidden][name*=csrf]").first
        with_token = {**fields, str(token_input.get_attribute("name")): token_input.input_value()}
        forged = reader.request.post(target, form=with_token, max_redirects=0)
        assert forged.status == 403, (forged.status, forged.text()[:500])
        assert api_status(fleet, CSRF_VICTIM) == ("valid", None)
    finally:
        admin_ctx.close()
        reader_ctx.close()


def test_sign_out_ends_the_session(browser: Browser, fleet: Fleet) -> None:
    """Sign out shows the login page again, and the old session cookie opens nothing."""
    from playwright.sync_api import expect

    context = new_context(browser)
    try:
        page = context.new_page()
        sign_in(page, fleet, fleet.reader)
        old = context.cookies()
        assert old, "signed in without a cookie?"
        # The session cookie: out of reach of scripts, and never sent from another site.
        for cookie in old:
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        assert page.evaluate("() => document.cookie") == ""
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("Token", exact=True)).to_be_visible()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    finally:
        context.close()

    replay = new_context(browser)
    try:
        replay.add_cookies(old)  # type: ignore[arg-type]
        page = replay.new_page()
        page.goto(fleet.url("/ui/certificates"))
        expect(page.get_by_label("Token", exact=True)).to_be_visible()
        assert page.get_by_role("button", name="Sign out").count() == 0
        assert "fleet.example.test" not in page.content()
    finally:
        replay.close()


def test_keyboard_reaches_the_controls_with_a_visible_focus(browser: Browser, fleet: Fleet) -> None:
    """Tab alone reaches the Token field and Sign in (Enter signs in), then the Search box;
    each focused control has a visible outline or box-shadow."""
    from playwright.sync_api import expect

    context = new_context(browser)
    try:
        page = context.new_page()
        page.goto(fleet.url("/ui/"))
        token = page.get_by_label("Token", exact=True)
        tab_to(page, "document.querySelector('input[type=password]')")
        ring = focus_ring(page, "document.querySelector('input[type=password]')")
        assert visible_ring(ring), f"the Token field's focus is invisible: {ring}"
        page.keyboard.type(fleet.reader)
        assert token.input_value() == fleet.reader
        button_js = (
            "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Sign in')"
        )
        tab_to(page, button_js)
        ring = focus_ring(page, button_js)
        assert visible_ring(ring), f"the Sign in button's focus is invisible: {ring}"
        page.keyboard.press("Enter")
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()

        page.get_by_role("link", name="Certificates", exact=True).first.click()
        search_js = "document.getElementById(document.evaluate(\"//label[normalize-space()='Search']\", document, null, 9, null).singleNodeValue.htmlFor)"  # noqa: E501
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        tab_to(page, search_js)
        ring = focus_ring(page, search_js)
        assert visible_ring(ring), f"the Search box's focus is invisible: {ring}"
    finally:
        context.close()


def tab_to(page: Page, element_js: str, presses: int = 40) -> None:
    """Press Tab until ``element_js`` has the focus (at most ``presses`` times)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate(f"() => document.activeElement === ({element_js})"):
            return
    trail = page.evaluate("() => document.activeElement && document.activeElement.outerHTML")
    raise AssertionError(f"{presses} Tabs did not reach {element_js}; focus is on {trail}")


def test_axe_sees_a_violation(browser: Browser) -> None:
    """The harness itself: on a page with an unlabelled field and grey-on-grey text, axe-core
    reports serious violations, so a clean report of the UI means something."""
    context = new_context(browser)
    try:
        page = context.new_page()
        page.set_content(
            '<!doctype html><html lang="en"><title>bad</title><main><h1>Bad</h1>'
            '<input type="text"><p style="color:#aaa;background:#bbb">faint</p></main></html>'
        )
        found = failing(axe_violations(page))
        assert {"label", "color-contrast"} <= {v["id"] for v in found}, found
        # What a failure prints: each rule, its help URL and the offending element.
        text = describe(found)
        assert "- color-contrast (serious)" in text and "<input" in text, text
        assert re.search(r"<https://\S+/color-contrast\S*>", text), text
    finally:
        context.close()


def test_every_page_passes_axe(browser: Browser, fleet: Fleet, shots: Path) -> None:
    """axe-core on the login page and every page an admin reaches: no serious or critical
    violation anywhere (moderate and minor ones are printed)."""
    # The UI's CSP forbids the injected axe script, rightly; only this context bypasses it.
    context = new_context(browser, bypass_csp=True)
    report: dict[str, list[dict[str, object]]] = {}
    try:
        page = context.new_page()

        def check(label: str) -> None:
            page.wait_for_load_state("load")
            report[label] = axe_violations(page)  # type: ignore[assignment]
            page.screenshot(path=shots / f"axe-{label.replace(' ', '-')}.png", full_page=True)

        page.goto(fleet.url("/ui/"))
        check("login")
        sign_in(page, fleet, fleet.admin)
        check("dashboard")
        page.get_by_role("link", name="Certificates", exact=True).first.click()
        check("certificates")
        open_certificate(page, fleet, CONFIRM_ONLY)
        check("certificate detail")
        revoke_on_page(page, fleet, CONFIRM_ONLY, "superseded", confirm=False)
        check("revoke confirmation")
        for label, pattern in (
            ("tokens", r"^tokens$"),
            ("authorities", r"^authorities$"),
            ("audit", r"^audit"),
        ):
            page.get_by_role("link", name=re.compile(pattern, re.I)).first.click()
            check(label)
        # The page that shows a new token's secret, once.
        page.get_by_role("link", name=re.compile(r"^tokens$", re.I)).first.click()
        page.get_by_label("Name", exact=True).fill("axe reader")
        page.get_by_role("button", name="Create token").click()
        assert "cas_" in page.locator("main").inner_text()
        check("token created")
        page.goto(fleet.url("/ui/no-such-page"))
        check("not found")
        # The ACME and OIDC pages, where the UI has them (issue 13 item 6).
        for label, pattern in (("ACME EAB keys", r"EAB|external account"),
                               ("provisioners", r"provisioner")):  # fmt: skip
            link = page.get_by_role("link", name=re.compile(pattern, re.I))
            if link.count():
                link.first.click()
                check(label)
    finally:
        context.close()
    assert api_status(fleet, CONFIRM_ONLY) == ("valid", None)  # only confirmed, never revoked
    bad = {label: failing(v) for label, v in report.items() if failing(v)}
    for label, violations in report.items():
        if violations and label not in bad:
            print(f"axe, {label} (not failing):\n{describe(violations)}")  # type: ignore[arg-type]
    assert not bad, "axe-core, serious or critical:\n" + "\n".join(
        f"{label}:\n{describe(v)}"
        for label, v in bad.items()  # type: ignore[arg-type]
    )
    assert {"login", "dashboard", "tokens", "authorities", "audit"} <= set(report)


def test_without_javascript_sign_in_search_and_revoke(browser: Browser, fleet: Fleet) -> None:
    """Every core flow works with JavaScript off (issue 13 item 1): plain forms and links."""
    context = new_context(browser, java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, fleet, fleet.admin)
        open_certificate(page, fleet, NO_JS)
        # Scripts really are off: ui.js's Copy buttons are not there.
        assert page.get_by_role("button", name=re.compile(r"^Copy")).count() == 0
        revoke_on_page(page, fleet, NO_JS, "cessationOfOperation", confirm=True)
        body = page.locator("main").inner_text()
        assert re.search(r"\brevoked\b", body, re.I), body
        assert api_status(fleet, NO_JS) == ("revoked", "cessationOfOperation")
    finally:
        context.close()
