"""Debian's Chromium under Playwright, and axe-core inside it: the tools of the browser tests.

Playwright's own browser download cannot work on these machines, so the browser is the system's
``/usr/bin/chromium`` (``CA_TEST_CHROMIUM`` overrides it), and axe-core is the npm package
installed by ``npm ci --prefix tests/ui/js``. In CI (``CI=true``) a missing tool fails the tests
instead of skipping them: a browser suite that silently skips is a hole in the build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(os.environ.get("CA_TEST_CHROMIUM", "/usr/bin/chromium"))
JS_DIR = Path(__file__).parent / "js"
AXE = JS_DIR / "node_modules" / "axe-core" / "axe.min.js"

# Headless, and quiet on a closed network: without these Chromium keeps trying to reach
# update, sync, field-trial and QUIC endpoints. --no-sandbox because CI runs as root, where
# Chromium refuses to start with its sandbox. Playwright gives each launch a fresh profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
]

# The impacts that fail a page (issue 13 item 7); other findings are printed only.
FAILING_IMPACTS = ("serious", "critical")


def missing(reason: str) -> None:
    """Skip locally, fail in CI, with the same reason and the command that fixes it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


def check_tools() -> None:
    """Chromium, the Playwright package and axe-core are all here, or the tests cannot run."""
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} is missing: apt-get install -y chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("the playwright package is missing: pip install -e '.[test]'")
    if not AXE.is_file():
        missing(f"{AXE} is missing: npm ci --prefix tests/ui/js")


@contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium for a module; closed (and its processes ended) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Every axe-core violation on the page as it is now (the page's context must bypass CSP:
    the UI's policy rightly forbids the injected script)."""
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return list(result["violations"])


def describe(violations: list[dict[str, Any]]) -> str:
    """Rule ids, impacts, help URLs and the offending nodes, for a failure message."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"][:5]:
            lines.append(f"    {' '.join(map(str, node['target']))}: {node['html'][:160]}")
        if len(v["nodes"]) > 5:
            lines.append(f"    ... and {len(v['nodes']) - 5} more nodes")
    return "\n".join(lines)


# Rules that fail whatever their impact, because issue 13 names what they check: headings in
# order (axe rates a skipped level "moderate").
FAILING_RULES = ("heading-order", "page-has-heading-one", "empty-heading")


def failing(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in violations if v["impact"] in FAILING_IMPACTS or v["id"] in FAILING_RULES]


def focus_ring(page: Page, selector_js: str) -> dict[str, str]:
    """The computed outline and box-shadow of the focused element, which ``selector_js`` (a JS
    expression for an element) must be: what a keyboard user sees as the focus indicator."""
    style: dict[str, str] = page.evaluate(
        f"""() => {{
            const el = {selector_js};
            if (el !== document.activeElement) return {{focused: 'no'}};
            const s = getComputedStyle(el);
            return {{focused: 'yes', outlineStyle: s.outlineStyle, outlineWidth: s.outlineWidth,
                     outlineColor: s.outlineColor, boxShadow: s.boxShadow,
                     focusVisible: String(el.matches(':focus-visible'))}};
        }}"""
    )
    return style


def visible_ring(style: dict[str, str]) -> bool:
    """An outline of some width, or a box-shadow: a focus indicator that can be seen."""
    outline = style.get("outlineStyle", "none") != "none" and style.get("outlineWidth") not in (
        "0px",
        None,
    )
    shadow = style.get("boxShadow", "none") not in ("none", "")
    return outline or shadow
