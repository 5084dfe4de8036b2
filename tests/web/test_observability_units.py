"""The small parts behind metrics, JSON logs and webhooks (issue 14), in one process: the
settings that configure them, the JSON log line, the webhook signature and the bounded label
values."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
from pathlib import Path

import pytest

from ca_service import metrics
from ca_service.config import load_settings
from ca_service.errors import ConfigError
from ca_service.logs import REQUEST_ID, JsonFormatter
from ca_service.notify import NoEvents, WebhookDispatcher, _safe, from_settings, sign


def _record(message: str, **attrs: object) -> logging.LogRecord:
    record = logging.LogRecord("ca_service.web", logging.WARNING, __file__, 1, message, None, None)
    for key, value in attrs.items():
        setattr(record, key, value)
    return record


def test_a_json_line_is_one_line_with_the_request_id_of_its_context() -> None:
    token = REQUEST_ID.set("rid-42")
    try:
        line = JsonFormatter().format(_record("two\nlines", fields={"actor": "token:abc"}))
    finally:
        REQUEST_ID.reset(token)
    assert "\n" not in line
    event = json.loads(line)
    assert event["request_id"] == "rid-42" and event["actor"] == "token:abc"
    assert event["level"] == "warning" and event["message"] == "two\nlines"
    assert event["time"].endswith("+00:00") and isinstance(event["pid"], int)
    outside = json.loads(JsonFormatter().format(_record("no request")))
    assert "request_id" not in outside


def test_an_exception_stays_inside_its_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_the_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"type": "certificate.issued"}'
    expected = hmac.new(b"key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"key", "1700000000", body) == f"sha256={expected}"
    # The timestamp is inside the MAC: the same body at another time is another signature.
    assert sign(b"key", "1700000001", body) != sign(b"key", "1700000000", body)


def test_webhook_urls_need_a_secret(tmp_path: Path) -> None:
    env = {"CA_WEBHOOK_URLS": "http://127.0.0.1:9/hook"}
    with pytest.raises(ConfigError, match="CA_WEBHOOK_SECRET"):
        from_settings(load_settings(env))
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    settings = load_settings({**env, "CA_WEBHOOK_SECRET_FILE": str(secret)})
    assert settings.webhook_secret == b"s3cret"
    assert "s3cret" not in repr(settings)
    assert isinstance(from_settings(settings), WebhookDispatcher)
    assert isinstance(from_settings(load_settings({})), NoEvents)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CA_LOG_FORMAT": "xml"}, "log_format"),
        ({"CA_TRUSTED_PROXIES": "10.0.0.0/8,not-an-address"}, "trusted_proxies"),
        ({"CA_WEBHOOK_URLS": "ftp://127.0.0.1/x"}, "webhook_urls"),
        ({"CA_METRICS_EXPIRY_LEAVES": "5000"}, "metrics_expiry_leaves"),
        ({"CA_WEBHOOK_ATTEMPTS": "0"}, "webhook_attempts"),
    ],
)
def test_bad_observability_settings_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_observability_settings_parse() -> None:
    settings = load_settings(
        {
            "CA_TRUSTED_PROXIES": "10.1.2.3, 192.168.0.0/16",
            "CA_LOG_FORMAT": "JSON",
            "CA_METRICS_ENABLED": "true",
        }
    )
    assert settings.trusted_proxies == ("10.1.2.3/32", "192.168.0.0/16")
    assert settings.log_format == "json" and settings.metrics_enabled
    assert load_settings({}).metrics_enabled is False  # off unless asked for


def test_label_values_are_bounded() -> None:
    assert metrics.requester_kind("token:0123") == "token"
    assert metrics.requester_kind("oidc:gitlab:project_path:x") == "oidc"
    assert metrics.requester_kind("made-up:anything") == "other"
    assert metrics.requester_kind("no-colon") == "other"
    assert metrics.bounded("server", ("server", "client")) == "server"
    assert metrics.bounded("x" * 500, ("server",)) == "other"


def test_a_webhook_url_is_logged_without_credentials_or_query() -> None:
    assert _safe("https://user:pw@hooks.example.test:8443/in?key=abc") == (
        "https://hooks.example.test:8443/in"
    )


def test_metrics_and_logs_sit_below_every_layer() -> None:
    """core, storage and web all record through ca_service/metrics.py and format through
    ca_service/logs.py, so those two import nothing of the service but its errors (else a
    layer would reach another through them)."""
    import ast

    import ca_service

    package = Path(ca_service.__file__).parent
    for name in ("metrics.py", "logs.py"):
        tree = ast.parse((package / name).read_text())
        imported = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        ours = {m for m in imported if m.startswith("ca_service")}
        assert ours <= {"ca_service.errors"}, (name, ours)
        if name == "metrics.py":  # the check sees imports: this one takes the errors
            assert ours == {"ca_service.errors"} and "prometheus_client" in imported
