"""Text the pages show for times, durations and serials: one wording everywhere, in UTC."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from ca_service.ui.blueprint import ui


@ui.app_template_filter("when")
def when(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@ui.app_template_filter("iso")
def iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def duration(delta: dt.timedelta) -> str:
    """A span in its largest useful unit: 3 days, 5 hours, 12 minutes, 40 seconds."""
    seconds = int(abs(delta.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@ui.app_template_filter("duration")
def duration_filter(delta: dt.timedelta) -> str:
    return duration(delta)


@ui.app_template_filter("colons")
def colons(hex_text: str) -> str:
    """A serial or fingerprint as colon-separated upper-case byte pairs."""
    text = hex_text.upper()
    if len(text) % 2:
        text = "0" + text
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2))


@ui.app_template_filter("pem_subject")
def pem_subject(pem: str) -> str:
    """The subject of a PEM certificate (an authority's chain lists them)."""
    return x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
