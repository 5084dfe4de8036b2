"""A browser without a browser for the admin UI's HTTP tests: a cookie jar, form posts, and the
pages parsed with the standard library's html.parser (enough to find forms, fields, labels,
links and the markup rules every page must keep; no new dependency)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urlsplit

from ..live import LiveServer, Reply

CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "ca_ui_session"


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.scripts_inline: list[str] = []
        self._in_script: Element | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag == "script":
            self._in_script = element
        if tag not in ("input", "meta", "link", "br", "img", "hr"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                break
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data
        if self._in_script is not None and data.strip():
            self.scripts_inline.append(data)


@dataclass
class Page:
    status: int
    headers: dict[str, str]
    body: bytes
    path: str
    elements: list[Element] = field(default_factory=list)
    inline_scripts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def all(self, tag: str, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k.rstrip("_")) == v for k, v in attrs.items())
        ]

    def one(self, tag: str, **attrs: str) -> Element:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found), self.path)
        return found[0]

    def h1(self) -> str:
        return self.one("h1").text.strip()

    def csrf(self) -> str:
        values = {e.attrs["value"] for e in self.all("input", name="csrf")}
        assert len(values) == 1, values
        return values.pop()

    def buttons(self) -> list[str]:
        return [" ".join(e.text.split()) for e in self.all("button")]

    def label_for(self, control_id: str) -> str:
        return " ".join(self.one("label", for_=control_id).text.split())

    def form_actions(self) -> list[str]:
        return [e.attrs.get("action", "") for e in self.all("form")]

    def links(self, text: str) -> list[str]:
        return [e.attrs["href"] for e in self.all("a") if " ".join(e.text.split()) == text]


def parse(reply: Reply, path: str) -> Page:
    page = Page(reply.status, reply.headers, reply.body, path)
    if reply.headers.get("content-type", "").startswith("text/html"):
        parser = _Parser()
        parser.feed(page.text)
        page.elements = parser.elements
        page.inline_scripts = parser.scripts_inline
    return page


class Browser:
    """One user agent: its cookies (Path=/ui), following nothing unless asked."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def _send(self, method: str, path: str, form: Any = None, **headers: str) -> Page:
        hdrs = dict(headers)
        if self.cookies and urlsplit(path).path.startswith("/ui"):
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        raw = None
        if form is not None:
            raw = urlencode(form).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        reply = self.live.request(method, path, raw=raw, headers=hdrs, check_spec=False)
        cookie = reply.headers.get("set-cookie")
        if cookie:
            self.set_cookies.append(cookie)
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value and "max-age=0" not in cookie.lower() and "1970" not in cookie:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return parse(reply, path)

    def get(self, path: str, **headers: str) -> Page:
        return self._send("GET", path, **headers)

    def post(self, path: str, form: Any, **headers: str) -> Page:
        return self._send("POST", path, form, **headers)

    def follow(self, page: Page) -> Page:
        assert page.status in (302, 303), (page.status, page.text[:300])
        return self.get(page.location)

    def sign_in(self, token: str) -> Page:
        """Sign in; the dashboard."""
        page = self.post("/ui/login", {"token": token})
        assert page.status == 303 and page.location == "/ui/", (page.status, page.text[:500])
        return self.follow(page)

    @property
    def session_id(self) -> str:
        return self.cookies[COOKIE]

    @property
    def session_hash(self) -> str:
        return hashlib.sha256(self.session_id.encode()).hexdigest()


def certificate_path(authority: str, serial: str) -> str:
    return f"/ui/certificates/{authority}/{serial}"


SERIAL_IN_OPENSSL = re.compile(r"Serial Number: ([0-9A-F]+)")
