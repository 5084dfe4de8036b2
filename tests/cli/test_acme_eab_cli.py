"""``ca-service acme eab create|list|revoke``: the HMAC key printed once with a certbot example,
``--json`` as the API's EABKey record, errors as one line with the usual exit codes, and a bad
grant writes nothing."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from ca_service.acme.eab import EABKeys
from ca_service.clock import SystemClock
from ca_service.config import Settings
from ca_service.storage.db import Database
from ca_service.web.openapi import document

from ..conftest import PASSPHRASE
from ..helpers import all_stored_bytes, cli_run, count_rows, one_error_line

KID = re.compile(r"\beab_[A-Za-z0-9_-]{22}\b")


def ok(settings: Settings, *args: str, **env: str | None) -> str:
    result = cli_run(settings, list(args), **env)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def inited(settings: Settings) -> Settings:
    ok(settings, "init")
    return settings


def _db(settings: Settings) -> Database:
    return Database(settings.resolved_database_url)


def _rows(settings: Settings) -> tuple[int, int]:
    db = _db(settings)
    try:
        return count_rows(db, "acme_eab_keys"), count_rows(db, "audit_events")
    finally:
        db.dispose()


def _validate(name: str, data: Any) -> None:
    spec = document()
    registry: Registry[Any] = Registry().with_resource(
        "urn:spec", Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    jsonschema.Draft202012Validator(
        {"$ref": f"urn:spec#/components/schemas/{name}"}, registry=registry
    ).validate(data)


def test_create_prints_the_key_once_with_a_certbot_example(inited: Settings) -> None:
    out = ok(
        inited,
        "acme", "eab", "create",
        "--name", "web servers",
        "--allow", "*.cli-eab.example.test",
        "--allow", "10.30.0.0/16",
        "--profile", "server",
        "--max-validity-days", "30",
        "--authority", "default",
        "--allow-wildcards",
    )  # fmt: skip
    kid_line, key_line, note, example = out.strip().splitlines()
    kid = kid_line.split()[-1]
    hmac_key = key_line.split()[-1]
    assert kid_line.startswith("kid:") and KID.fullmatch(kid)
    assert key_line.startswith("hmac key:")
    raw = base64.urlsafe_b64decode(hmac_key + "=")
    assert len(raw) == 32 and "=" not in hmac_key
    assert "shown once" in note
    # Limited to the authority "default": its own directory.
    assert example.startswith("example:  certbot certonly")
    assert "--server http://127.0.0.1:8000/acme/default/directory" in example
    assert f"--eab-kid {kid}" in example and f"--eab-hmac-key {hmac_key}" in example
    assert "-d www.cli-eab.example.test" in example

    db = _db(inited)
    try:
        found = EABKeys(db, SystemClock(), PASSPHRASE).hmac_key(kid)
        assert found is not None
        record, opened = found
        assert opened == raw
        assert record.name == "web servers"
        assert record.policy.allowed_names == ("*.cli-eab.example.test", "10.30.0.0/16")
        assert record.policy.profiles == ("server",) and record.policy.max_validity_days == 30
        assert record.policy.authorities == ("default",) and record.policy.allow_wildcards
        assert record.created_by.startswith("cli:")
        stored = all_stored_bytes(db)
        assert raw not in stored and hmac_key.encode() not in stored
    finally:
        db.dispose()

    listed = ok(inited, "acme", "eab", "list")
    assert kid in listed and "unused" in listed and "names=*.cli-eab.example.test" in listed
    assert hmac_key not in listed


def test_json_output_is_the_api_record(inited: Settings) -> None:
    result = cli_run(
        inited,
        ["acme", "eab", "create", "--name", "j", "--allow", "j.example.test", "--json"],
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    _validate("EABKey", created)
    assert KID.fullmatch(created["kid"]) and len(created["hmac_key"]) == 43
    assert created["allowed_names"] == ["j.example.test"] and created["bound_account"] is None
    assert "shown once" in result.stderr

    listed = json.loads(ok(inited, "acme", "eab", "list", "--json"))
    assert isinstance(listed, list) and len(listed) == 1
    for item in listed:
        _validate("EABKey", item)
    assert listed[0] == {k: v for k, v in created.items() if k != "hmac_key"}

    revoked = json.loads(ok(inited, "acme", "eab", "revoke", created["kid"], "--json"))
    _validate("EABKey", revoked)
    assert revoked["kid"] == created["kid"] and revoked["revoked_at"] is not None
    assert "hmac_key" not in revoked

    # Not limited to one authority: the default authority's directory.
    text = ok(inited, "acme", "eab", "create", "--name", "any CA", "--allow", "a.example.test")
    assert "--server http://127.0.0.1:8000/acme/directory " in text


def test_revoke_is_idempotent_and_needs_no_passphrase(inited: Settings) -> None:
    out = ok(inited, "acme", "eab", "create", "--name", "r", "--allow", "r.example.test")
    match = KID.search(out)
    assert match is not None
    kid = match.group()
    first = ok(inited, "acme", "eab", "revoke", kid, CA_KEY_PASSPHRASE=None)
    assert first.strip() == f"EAB key {kid} revoked"
    again = ok(inited, "acme", "eab", "revoke", kid)
    assert again == first
    assert "revoked" in ok(inited, "acme", "eab", "list", CA_KEY_PASSPHRASE=None)
    db = _db(inited)
    try:
        assert count_rows(db, "audit_events WHERE action = 'acme.eab.revoke'") == 1
    finally:
        db.dispose()


def test_list_without_keys(inited: Settings) -> None:
    assert ok(inited, "acme", "eab", "list").strip() == "no EAB keys"
    assert json.loads(ok(inited, "acme", "eab", "list", "--json")) == []


BASE = ["acme", "eab", "create", "--name", "bad"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--allow", "bad pattern!"], "bad pattern"),
        (["--allow", "a.example.test", "--profile", "no-such-profile"], "unknown profile"),
        (["--allow", "a.example.test", "--authority", "no-such-ca"], "unknown authority"),
        (["--allow", "a.example.test", "--max-validity-days", "0"], "max_validity_days"),
        (["--allow", "a.example.test", "--max-validity-days", "-3"], "max_validity_days"),
        (["--allow", "a.example.test", "--name", "n" * 129], "name"),
        (["--allow", "a.example.test", "--name", "   "], "name"),
    ],
)
def test_a_bad_grant_is_one_line_exit_1_and_writes_nothing(
    inited: Settings, args: list[str], words: str
) -> None:
    before = _rows(inited)
    result = cli_run(inited, [*BASE, *args])
    assert result.exit_code == 1
    assert words in one_error_line(result)
    assert result.stdout == ""
    assert _rows(inited) == before


def test_usage_errors_exit_2(inited: Settings) -> None:
    before = _rows(inited)
    no_allow = cli_run(inited, BASE)
    assert no_allow.exit_code == 2 and "--allow" in no_allow.stderr
    not_a_number = cli_run(inited, [*BASE, "--allow", "a.example.test", "--max-validity-days", "x"])
    assert not_a_number.exit_code == 2
    assert _rows(inited) == before


def test_unknown_kid_and_a_missing_passphrase(inited: Settings) -> None:
    unknown = cli_run(inited, ["acme", "eab", "revoke", "eab_" + "Q" * 22])
    assert unknown.exit_code == 1 and "no EAB key" in one_error_line(unknown)
    malformed = cli_run(inited, ["acme", "eab", "revoke", "not-a-kid", "--json"])
    assert malformed.exit_code == 1 and malformed.stdout == ""
    # Making a key seals it under the CA key passphrase: without one, nothing is made.
    before = _rows(inited)
    bare = cli_run(inited, [*BASE, "--allow", "a.example.test"], CA_KEY_PASSPHRASE=None)
    assert bare.exit_code == 3 and "passphrase" in one_error_line(bare)
    assert _rows(inited) == before


def test_an_uninitialised_database_is_exit_3(settings: Settings) -> None:
    result = cli_run(settings, ["acme", "eab", "list"])
    assert result.exit_code == 3 and "db upgrade" in one_error_line(result)
