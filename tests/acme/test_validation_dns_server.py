"""The loopback DNS server the ACME tests rely on: answers, updates from other processes, CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from .dns_server import LoopbackDNS, read_records, update_records

ROOT = Path(__file__).resolve().parents[2]


def _resolver(server: LoopbackDNS) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = 2.0
    return resolver


def _ask(server: LoopbackDNS, name: str, rdtype: str, *, tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, "127.0.0.1", port=server.port, timeout=2.0)


def test_answers_from_the_records_file_over_udp_and_tcp(tmp_path: Path) -> None:
    with LoopbackDNS(tmp_path / "r.json") as server:
        server.set("a.example.test", "A", ["127.0.0.7"])
        server.set("A.Example.Test.", "AAAA", ["::1"])  # same name: case and dot do not matter
        for tcp in (False, True):
            answer = _ask(server, "a.example.test", "A", tcp=tcp)
            assert answer.rcode() == dns.rcode.NOERROR
            assert [str(r) for r in answer.answer[0]] == ["127.0.0.7"]
            assert answer.flags & dns.flags.AA
        assert [str(r) for r in _resolver(server).resolve("a.example.test", "AAAA")] == ["::1"]
        assert read_records(server.records_path) == {
            "a.example.test.": {"A": ["127.0.0.7"], "AAAA": ["::1"]}
        }


def test_nxdomain_nodata_and_empty_non_terminals(tmp_path: Path) -> None:
    with LoopbackDNS(tmp_path / "r.json") as server:
        server.set("x.y.example.test", "TXT", ["v"])
        assert _ask(server, "nothing.example.test", "A").rcode() == dns.rcode.NXDOMAIN
        nodata = _ask(server, "x.y.example.test", "A")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        ent = _ask(server, "y.example.test", "TXT")  # exists as the parent of x.y
        assert ent.rcode() == dns.rcode.NOERROR and not ent.answer


def test_default_a_answers_unlisted_names(tmp_path: Path) -> None:
    with LoopbackDNS(tmp_path / "r.json", default_a="127.0.0.1") as server:
        resolver = _resolver(server)
        assert [str(r) for r in resolver.resolve("anything.example.test", "A")] == ["127.0.0.1"]
        # The name exists, so other types are NOERROR without data, not NXDOMAIN.
        assert (
            resolver.resolve("anything.example.test", "TXT", raise_on_no_answer=False).rrset is None
        )
        # A name given only CAA keeps the default address; one given AAAA only does not.
        server.set("caa.example.test", "CAA", ['0 issue "ca.example.test"'])
        assert [str(r) for r in resolver.resolve("caa.example.test", "A")] == ["127.0.0.1"]
        server.set("v6.example.test", "AAAA", ["::1"])
        assert resolver.resolve("v6.example.test", "A", raise_on_no_answer=False).rrset is None


def test_txt_caa_cname_and_rcode(tmp_path: Path) -> None:
    long_value = "x" * 300
    with LoopbackDNS(tmp_path / "r.json") as server:
        server.set("t.example.test", "TXT", ["one", long_value])
        server.set("c.example.test", "CAA", ['128 issue "ca.example.test; accounturi=https://a/1"'])
        server.set("alias.example.test", "CNAME", ["t.example.test"])
        server.set("bad.example.test", "RCODE", ["SERVFAIL"])
        resolver = _resolver(server)
        txt = sorted(b"".join(r.strings) for r in resolver.resolve("t.example.test", "TXT"))
        assert txt == [b"one", long_value.encode()]
        (caa,) = resolver.resolve("c.example.test", "CAA")
        assert (caa.flags, caa.tag, caa.value) == (
            128,
            b"issue",
            b"ca.example.test; accounturi=https://a/1",
        )
        via = resolver.resolve("alias.example.test", "TXT")
        assert via.rrset is not None and str(via.rrset.name) == "t.example.test."
        assert [b"".join(r.strings) for r in via.rrset] == [b"one", long_value.encode()]
        assert _ask(server, "bad.example.test", "A").rcode() == dns.rcode.SERVFAIL


def test_add_and_remove(tmp_path: Path) -> None:
    server = LoopbackDNS(tmp_path / "r.json")
    server.add("n.example.test", "TXT", "a")
    server.add("n.example.test", "TXT", "b")
    server.add("n.example.test", "TXT", "a")  # kept once
    assert server.records() == {"n.example.test.": {"TXT": ["a", "b"]}}
    server.remove("n.example.test", "TXT", "a")
    assert server.records() == {"n.example.test.": {"TXT": ["b"]}}
    server.remove("n.example.test", "TXT")
    assert server.records() == {}
    with pytest.raises(ValueError, match="unsupported record type"):
        server.add("n.example.test", "MX", "10 mail")


def test_stop_releases_the_port(tmp_path: Path) -> None:
    server = LoopbackDNS(tmp_path / "r.json").start()
    port = server.port
    server.stop()
    server.stop()  # idempotent
    with LoopbackDNS(tmp_path / "r.json", port=port) as again:
        assert again.port == port


def _add_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        value = f"w{worker}-{i}"
        update_records(Path(path), "race.example.test", "TXT", lambda old, v=value: [*old, v])


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_add_many, args=(str(path), w, 25)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    values = read_records(path)["race.example.test."]["TXT"]
    assert len(values) == 100 and len(set(values)) == 100
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.acme.dns_server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lego_exec_present_and_cleanup_from_another_process(tmp_path: Path) -> None:
    with LoopbackDNS(tmp_path / "r.json") as server:
        fqdn = "_acme-challenge.a.example.test."  # lego passes the FQDN with its final dot
        done = _cli("present", fqdn, "the-value", "--records", str(server.records_path))
        assert done.returncode == 0, done.stderr
        # The running server sees the other process's change on the next query.
        answer = _resolver(server).resolve(fqdn, "TXT")
        assert [b"".join(r.strings) for r in answer] == [b"the-value"]
        done = _cli("cleanup", fqdn, "the-value", "--records", str(server.records_path))
        assert done.returncode == 0, done.stderr
        assert _ask(server, fqdn, "TXT").rcode() == dns.rcode.NXDOMAIN
        assert json.loads(server.records_path.read_text()) == {}


def test_the_lego_hook_takes_a_value_that_starts_with_a_dash(tmp_path: Path) -> None:
    """A DNS-01 TXT value is base64url: one in 64 starts with "-". lego calls the hook as
    ``HOOK present FQDN VALUE``; the value must not be read as an option (a CI run lost a
    wildcard order to this)."""
    from .clients import write_exec_hook

    records = tmp_path / "r.json"
    hook = write_exec_hook(tmp_path / "hook", records)
    fqdn = "_acme-challenge.a.example.test."
    value = "-Zx3_kQ9"
    for command in ("present", "cleanup"):
        done = subprocess.run(
            [str(hook), command, fqdn, value], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        if command == "present":
            assert read_records(records)[fqdn]["TXT"] == [value]
    assert not read_records(records).get(fqdn, {}).get("TXT")


def test_cli_refuses_bad_usage(tmp_path: Path) -> None:
    done = _cli("present", "only-one-arg", "--records", str(tmp_path / "r.json"))
    assert done.returncode == 2 and "usage" in done.stderr


def test_cli_serve(tmp_path: Path) -> None:
    records = tmp_path / "r.json"
    records.write_text(json.dumps({"s.example.test": {"A": ["127.0.0.9"]}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.acme.dns_server", "serve", "--records", str(records)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("port=")
        port = int(line.strip().split("=", 1)[1])
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], port, 2.0
        assert [str(r) for r in resolver.resolve("s.example.test", "A")] == ["127.0.0.9"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
