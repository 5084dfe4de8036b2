"""The client library's parts on their own: fingerprints, retries, TLS verification, atomic
files, credentials, and refusing answers that are not the certificate asked for. The peers
are loopback fakes (tests/client/fakes.py) where the test needs a server that misbehaves."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ca_service.client import files, flow
from ca_service.client.bootstrap import ensure_root, parse_fingerprint
from ca_service.client.credentials import Credential, check_id_token, choose, oidc_from_github
from ca_service.client.errors import ClientError, Refused, Unreachable, UsageError
from ca_service.client.transport import (
    Endpoint,
    HttpsClient,
    retry_after,
    unverified_context,
    verifying_context,
)
from ca_service.crypto.keys import key_type_of
from ca_service.crypto.names import parse_name
from ca_service.domain import KeyType

from .fakes import Reply, Seen, TinyCA, ca_service_route, fake_jwt, json_reply, pem, serve

# ---------------------------------------------------------------------------- fingerprints


@pytest.mark.parametrize(
    "text",
    [
        "AB" * 32,
        "ab" * 32,
        ":".join(["Ab"] * 32),
        "sha256:" + "ab" * 32,
        "SHA256 Fingerprint=" + ":".join(["AB"] * 32),
        " " + " ".join(["ab"] * 32) + "\n",
    ],
)
def test_fingerprint_forms(text: str) -> None:
    assert parse_fingerprint(text) == bytes([0xAB]) * 32


@pytest.mark.parametrize("text", ["", "ab" * 31, "ab" * 33, "zz" * 32, "sha1:" + "ab" * 20])
def test_bad_fingerprints(text: str) -> None:
    with pytest.raises(UsageError):
        parse_fingerprint(text)


def test_bootstrap_keeps_only_the_matching_root(tmp_path: Path) -> None:
    ca = TinyCA()
    right = ca.cert.fingerprint(hashes.SHA256()).hex()
    with serve(ca_service_route(ca), ca.server_context(tmp_path)) as server:
        endpoint = Endpoint.parse(server.url)
        root = tmp_path / "root.pem"
        with pytest.raises(Unreachable, match="fingerprint"):
            ensure_root(endpoint, root, "00" * 32)
        assert not root.exists()
        pem, fetched = ensure_root(endpoint, root, right.upper())
        assert fetched and pem == ca.pem == root.read_text()
        # Present and matching: no fetch at all.
        count = len(server.seen)
        assert ensure_root(endpoint, root, right) == (ca.pem, False)
        assert ensure_root(endpoint, root, None) == (ca.pem, False)
        assert len(server.seen) == count


def test_a_root_file_that_is_no_root_is_refused(tmp_path: Path) -> None:
    ca = TinyCA()
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(ca.pem + ca.pem)
    with pytest.raises(Unreachable, match="not one root"):
        ensure_root(Endpoint.parse("https://127.0.0.1:1"), leaf, None)


# ---------------------------------------------------------------------------- https client


def test_retry_after_forms() -> None:
    assert retry_after("7", 1.0) == 7.0
    assert retry_after(None, 2.0) == 2.0
    assert retry_after("garbage", 3.0) == 3.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1.0, now=1445412470.0) == 10.0


def test_503_is_retried_with_retry_after_then_succeeds(tmp_path: Path) -> None:
    ca = TinyCA()
    answers: list[Reply] = [
        json_reply(503, {"detail": "busy"}, **{"Retry-After": "5"}),
        json_reply(503, {"detail": "busy"}, **{"Retry-After": "500"}),
        json_reply(201, {"ok": True}),
    ]

    def route(_: Seen) -> Reply:
        return answers.pop(0)

    slept: list[float] = []
    notes: list[str] = []
    with serve(route, ca.server_context(tmp_path)) as server:
        client = HttpsClient(
            Endpoint.parse(server.url),
            verifying_context(ca.pem),
            attempts=4,
            max_wait=30,
            sleep=slept.append,
            on_wait=notes.append,
        )
        answer = client.request("POST", "/x", body=b"{}")
        assert answer.status == 201 and answer.json() == {"ok": True}
        assert len(server.seen) == 3
    assert slept == [5.0, 30.0]  # the server's wait, capped by max_wait
    assert "attempt 2/4" in notes[0]


def test_retries_are_bounded(tmp_path: Path) -> None:
    ca = TinyCA()
    with serve(lambda _: json_reply(503, {"detail": "busy"}), ca.server_context(tmp_path)) as s:
        client = HttpsClient(
            Endpoint.parse(s.url), verifying_context(ca.pem), attempts=3, sleep=lambda _: None
        )
        assert client.request("GET", "/").status == 503
        assert len(s.seen) == 3


def test_a_post_is_not_resent_after_the_connection_dropped(tmp_path: Path) -> None:
    ca = TinyCA()
    with serve(lambda _: None, ca.server_context(tmp_path)) as server:
        client = HttpsClient(
            Endpoint.parse(server.url), verifying_context(ca.pem), sleep=lambda _: None
        )
        with pytest.raises(Unreachable, match="may have been acted on"):
            client.request("POST", "/api/v1/certificates", body=b"{}")
        assert len(server.seen) == 1
        # A GET is safe to send again: all attempts are used.
        with pytest.raises(Unreachable, match="cannot reach"):
            client.request("GET", "/ca/root.pem")
        assert len(server.seen) == 1 + client.attempts


def test_a_server_the_root_did_not_certify_is_refused_at_once(tmp_path: Path) -> None:
    ca, other = TinyCA(), TinyCA("Other Root")
    with serve(lambda _: json_reply(200, {}), other.server_context(tmp_path)) as server:
        client = HttpsClient(Endpoint.parse(server.url), verifying_context(ca.pem))
        with pytest.raises(Unreachable, match="cannot verify"):
            client.request("GET", "/")
        assert server.seen == []
        # The bootstrap channel does not verify: the fingerprint decides there.
        loose = HttpsClient(Endpoint.parse(server.url), unverified_context())
        assert loose.request("GET", "/").status == 200


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1", "ftp://x", "https://", "https://u:p@h", "https://h:99999", "https://h/?q"],
)
def test_bad_server_urls(url: str) -> None:
    with pytest.raises(UsageError):
        Endpoint.parse(url)


def test_endpoint_keeps_a_path_prefix() -> None:
    endpoint = Endpoint.parse("https://[::1]:8443/ca/")
    assert (endpoint.host, endpoint.port, endpoint.prefix) == ("::1", 8443, "/ca")
    assert endpoint.url == "https://[::1]:8443/ca"


# ---------------------------------------------------------------------------- files


def test_private_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        staged = files.stage(tmp_path / "k.key", b"secret", files.PRIVATE)
        # Already private before it has its final name.
        assert stat.S_IMODE(staged.temp.stat().st_mode) == 0o600
        files.commit([staged])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600
    assert (tmp_path / "k.key").read_bytes() == b"secret"


def test_staging_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    (tmp_path / "a.crt").write_bytes(b"old")
    with pytest.raises(RuntimeError), files.staging() as staged:
        staged.append(files.stage(tmp_path / "a.crt", b"new", files.PUBLIC))
        raise RuntimeError("crash before commit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.crt"]
    assert (tmp_path / "a.crt").read_bytes() == b"old"


def test_layout_names() -> None:
    pem = files.Layout(Path("/x/app"), p12=False)
    assert [p.name for p in pem.outputs().values()] == [
        "app.key",
        "app.crt",
        "app.chain.pem",
        "app.fullchain.pem",
    ]
    assert pem.root.name == "app.root.pem"
    assert files.Layout(Path("/x/app"), p12=True).outputs() == {"pkcs12": Path("/x/app.p12")}


# ---------------------------------------------------------------------------- credentials


def _choose(**kwargs: object) -> Credential:
    args: dict[str, object] = {
        "token": None,
        "token_file": None,
        "oidc": False,
        "oidc_token_file": None,
        "oidc_token_env": None,
        "audience": "ca-service",
        "environ": {},
        "warn": lambda _m: None,
    }
    args.update(kwargs)
    return choose(**args)()  # type: ignore[arg-type]


def test_credential_choices(tmp_path: Path) -> None:
    assert _choose(token="t1").value == "t1"
    path = tmp_path / "tok"
    path.write_text("t2\n")
    assert _choose(token_file=path).value == "t2"
    jwt = fake_jwt({"aud": "ca-service"})
    assert _choose(oidc_token_env="CA_ID_TOKEN", environ={"CA_ID_TOKEN": jwt}).value == jwt
    assert "t1" not in repr(_choose(token="t1"))
    for bad in (
        {},
        {"token": "a", "oidc": True},
        {"token": "a", "token_file": path},
        {"oidc": True},
        {"oidc_token_env": "NOPE"},
        {"token": "has space"},
        {"oidc_token_file": path},  # not a JWT
    ):
        with pytest.raises(UsageError):
            _choose(**bad)


def test_id_token_diagnostics() -> None:
    warnings: list[str] = []
    past = int((dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).timestamp())
    check_id_token(fake_jwt({"aud": ["other"], "exp": past}), "ca-service", warnings.append)
    assert any("audience" in w for w in warnings) and any("expired" in w for w in warnings)
    warnings.clear()
    check_id_token(fake_jwt({"aud": ["x", "ca-service"]}), "ca-service", warnings.append)
    assert warnings == []


def test_github_actions_token_request(tmp_path: Path) -> None:
    jwt = fake_jwt({"aud": "my-aud"})

    def route(req: Seen) -> Reply:
        if req.headers.get("authorization") != "bearer runtime-secret":
            return json_reply(401, {"message": "bad credentials"})
        if "audience=my-aud" not in req.path or "api-version=2.0" not in req.path:
            return json_reply(400, {"message": "bad query"})
        return json_reply(200, {"count": 1, "value": jwt})

    with serve(route) as github:
        env = {
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{github.url}/token?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runtime-secret",
        }
        assert oidc_from_github(env, "my-aud").value == jwt
        with pytest.raises(Refused, match="401"):
            oidc_from_github({**env, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"}, "my-aud")
    with pytest.raises(UsageError, match="https"):
        oidc_from_github({**env, "ACTIONS_ID_TOKEN_REQUEST_URL": "http://example.test/t"}, "a")


# ---------------------------------------------------------------------------- the flow


def _request(tmp_path: Path, server_url: str, ca: TinyCA, **kwargs: object) -> flow.Request:
    return flow.Request(
        server=Endpoint.parse(server_url),
        names=(parse_name("app.example.test"),),
        layout=files.Layout(tmp_path / "out" / "app", p12=False),
        root_file=tmp_path / "root.pem",
        root_fingerprint=ca.cert.fingerprint(hashes.SHA256()).hex(),
        credential=lambda: Credential("test", "tok"),
        attempts=1,
        **kwargs,  # type: ignore[arg-type]
    )


def test_an_answer_from_another_ca_is_refused_and_nothing_written(tmp_path: Path) -> None:
    ca, other = TinyCA(), TinyCA("Impostor")
    route = ca_service_route(ca, signer=other)
    with (
        serve(route, ca.server_context(tmp_path)) as server,
        pytest.raises(Unreachable, match="does not chain"),
    ):
        flow.run(_request(tmp_path, server.url, ca))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["app.lock"]


def test_an_answer_for_another_key_is_refused(tmp_path: Path) -> None:
    ca = TinyCA()
    stranger = TinyCA().key.public_key()

    def route(req: Seen) -> Reply:
        if req.path == "/ca/root.pem":
            return 200, {}, ca.pem.encode()
        cert = ca.issue(stranger, [x509.DNSName("app.example.test")])
        return json_reply(201, {"certificate": pem(cert), "chain": ""})

    with (
        serve(route, ca.server_context(tmp_path)) as server,
        pytest.raises(Unreachable, match="not for the key"),
    ):
        flow.run(_request(tmp_path, server.url, ca))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["app.lock"]


def test_a_5xx_is_unreachable_and_a_4xx_refused(tmp_path: Path) -> None:
    ca = TinyCA()
    status = {"code": 500}

    def route(req: Seen) -> Reply:
        if req.path == "/ca/root.pem":
            return 200, {}, ca.pem.encode()
        return json_reply(status["code"], {"detail": "nope", "rule": "some.rule"})

    with serve(route, ca.server_context(tmp_path)) as server:
        with pytest.raises(Unreachable, match="500"):
            flow.run(_request(tmp_path, server.url, ca))
        status["code"] = 403
        with pytest.raises(Refused, match=r"some\.rule") as info:
            flow.run(_request(tmp_path, server.url, ca))
        assert info.value.rule == "some.rule" and info.value.status == 403


def test_key_types_and_the_csr(tmp_path: Path) -> None:
    ca = TinyCA()
    seen_csrs: list[x509.CertificateSigningRequest] = []
    route = ca_service_route(ca)

    def recording(req: Seen) -> Reply:
        if req.path == "/api/v1/certificates":
            seen_csrs.append(x509.load_pem_x509_csr(json.loads(req.body)["csr"].encode()))
        return route(req)

    names = (
        parse_name("app.example.test"),
        parse_name("192.0.2.7"),
        parse_name("uri:spiffe://t/x"),
    )
    with serve(recording, ca.server_context(tmp_path)) as server:
        for key_type in (KeyType.ECDSA_P384, KeyType.ED25519, KeyType.RSA_2048):
            req = _request(tmp_path, server.url, ca, key_type=key_type, renew_within=1.0)
            outcome = flow.run(flow.Request(**{**req.__dict__, "names": names}))
            assert outcome.action == "issued"
    assert [key_type_of(c.public_key()) for c in seen_csrs] == [
        KeyType.ECDSA_P384,
        KeyType.ED25519,
        KeyType.RSA_2048,
    ]
    # The second and third runs found a certificate of theirs: renewal was asked first, and the
    # fake's 404 ("no such serial") led to a fresh issuance.
    posts = [r.path for r in server.seen if r.method == "POST"]
    assert posts[0] == "/api/v1/certificates"
    assert posts[1].endswith("/renew") and posts[2] == "/api/v1/certificates"
    csr = seen_csrs[0]
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=app.example.test"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san) == 3


def test_a_second_run_for_the_same_prefix_waits_then_gives_up(tmp_path: Path) -> None:
    ca = TinyCA()
    with serve(ca_service_route(ca), ca.server_context(tmp_path)) as server:
        req = flow.Request(**{**_request(tmp_path, server.url, ca).__dict__, "timeout": 1.0})
        with files.locked(req.layout.lock, 0), pytest.raises(ClientError, match="another"):
            flow.run(req)
        assert not req.layout.certificate.exists()
        assert stat.S_IMODE(req.layout.lock.stat().st_mode) == 0o600
        # Released: the next run proceeds.
        assert flow.run(req).action == "issued"


def test_clock_skew_up_to_five_minutes_is_tolerated() -> None:
    ca = TinyCA()
    key = TinyCA().key
    cert = ca.issue(key.public_key(), [x509.DNSName("a.test")])
    names = (parse_name("a.test"),)
    start = cert.not_valid_before_utc
    flow.verify_issued(ca.cert, cert, (), key, names, start - dt.timedelta(minutes=4))
    with pytest.raises(Unreachable, match="does not chain"):
        flow.verify_issued(ca.cert, cert, (), key, names, start - dt.timedelta(minutes=6))
    with pytest.raises(Refused, match=r"without dns:b\.test"):
        flow.verify_issued(ca.cert, cert, (), key, (*names, parse_name("b.test")), start)


def test_a_certificate_of_another_root_is_replaced_not_renewed(tmp_path: Path) -> None:
    old_ca, new_ca = TinyCA(), TinyCA("New Root")
    with serve(ca_service_route(old_ca), old_ca.server_context(tmp_path)) as server:
        assert flow.run(_request(tmp_path, server.url, old_ca)).action == "issued"
    with serve(ca_service_route(new_ca), new_ca.server_context(tmp_path)) as server:
        # The CA was rebuilt: a new fingerprint replaces the root file, and the certificate on
        # disk, which no longer chains to it, is replaced by a fresh issuance.
        outcome = flow.run(_request(tmp_path, server.url, new_ca))
        assert outcome.action == "issued" and outcome.root_fetched
        assert [r.path for r in server.seen if r.method == "POST"] == ["/api/v1/certificates"]
    assert (tmp_path / "root.pem").read_text() == new_ca.pem


def test_p12_with_the_wrong_passphrase_is_a_usage_error(tmp_path: Path) -> None:
    ca = TinyCA()
    with serve(ca_service_route(ca), ca.server_context(tmp_path)) as server:
        base = _request(tmp_path, server.url, ca).__dict__
        layout = files.Layout(tmp_path / "out" / "app", p12=True)
        first = flow.Request(**{**base, "layout": layout, "p12_passphrase": b"right"})
        assert flow.run(first).action == "issued"
        assert flow.run(first).action == "unchanged"
        wrong = flow.Request(**{**base, "layout": layout, "p12_passphrase": b"wrong"})
        with pytest.raises(UsageError, match="passphrase"):
            flow.run(wrong)


@pytest.mark.parametrize(
    ("text", "value"), [("1/3", 1 / 3), ("0.25", 0.25), ("30%", 0.3), ("0", 0.0), ("1", 1.0)]
)
def test_renew_within_forms(text: str, value: float) -> None:
    from ca_service.cli.request import parse_fraction

    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["1/0", "4/3", "101%", "-0.1", "a third", ""])
def test_renew_within_refusals(text: str) -> None:
    import click

    from ca_service.cli.request import parse_fraction

    with pytest.raises(click.BadParameter):
        parse_fraction(text)
