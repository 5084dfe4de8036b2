"""A small authoritative DNS server on loopback for ACME tests (ours, certbot's, lego's).

It answers every name from one JSON records file, re-read on every query, so a test, a client's
hook or another process can change the zone while the server runs::

    {"a.example.test.": {"A": ["127.0.0.1"], "AAAA": ["::1"],
                          "TXT": ["some value"], "CAA": ["0 issue \\"ca.example.test\\""],
                          "CNAME": ["b.example.test."]},
     "broken.example.test.": {"RCODE": ["SERVFAIL"]}}

Names are case-insensitive and may be written with or without the final dot. Types served: A,
AAAA, TXT (each value one record; values longer than 255 bytes are split into strings), CAA
(``flags tag "value"``), CNAME (followed within the file, at most 8 links); the pseudo-type
``RCODE`` makes every query for that name answer with that response code (``SERVFAIL``,
``REFUSED``, ``NXDOMAIN``) to test fail-closed paths.

Answers: data of the asked type -> NOERROR with it; the name exists (in the file, as the parent of a
name in the file, or through ``default_a``) but not with that type -> NOERROR and no answer;
otherwise NXDOMAIN. With ``default_a="127.0.0.1"`` every name absent from the file has that A
record, so http-01 and tls-alpn-01 tests need not register names; so has a name in the file with
no A, AAAA or CNAME of its own (adding CAA or TXT to a name keeps it reachable), while a name
given only AAAA stays IPv6-only.

In a test::

    with LoopbackDNS(tmp_path / "records.json", default_a="127.0.0.1") as server:
        server.add("_acme-challenge.a.example.test", "TXT", value)
        config = ValidationConfig(resolver=("127.0.0.1", server.port))

(or the ``loopback_dns`` fixture in ``tests/acme/conftest.py``). From a shell, run from the
repository root (lego's ``exec`` DNS provider calls ``EXEC_PATH present|cleanup FQDN VALUE``)::

    python -m tests.acme.dns_server serve --records FILE [--port N] [--default-a 127.0.0.1]
    python -m tests.acme.dns_server present _acme-challenge.a.example.test. VALUE --records FILE
    python -m tests.acme.dns_server cleanup _acme-challenge.a.example.test. VALUE --records FILE

``serve`` prints ``port=N`` on its first line and runs until SIGTERM/SIGINT. Updates (``set``,
``add``, ``remove``, present, cleanup) take an exclusive ``flock`` on ``FILE.lock`` for the
read-modify-write and replace the file atomically (temp file + ``os.replace``), so concurrent
writers from several processes lose no update and the server never reads a half-written file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from dnslib import AAAA, CAA, CNAME, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import DNSHandler, DNSServer

Records = dict[str, dict[str, list[str]]]

TTL = 1
MAX_CNAME_CHAIN = 8
SUPPORTED_TYPES = ("A", "AAAA", "TXT", "CAA", "CNAME", "RCODE")


def _norm(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def read_records(path: Path) -> Records:
    """The zone as stored; a missing or empty file is an empty zone."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the records file must hold a JSON object")
    return {
        _norm(name): {rtype.upper(): list(values) for rtype, values in types.items()}
        for name, types in data.items()
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process that updates ``path``."""
    with open(f"{path}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, records: Records) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(records, out, indent=1, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def update_records(path: Path, name: str, rtype: str, change: Any) -> None:
    """Apply ``change(values) -> values`` to one name/type under the lock, atomically."""
    rtype = rtype.upper()
    if rtype not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported record type {rtype!r}")
    with _locked(path):
        records = read_records(path)
        name = _norm(name)
        types = records.setdefault(name, {})
        values = list(change(list(types.get(rtype, []))))
        if values:
            types[rtype] = values
        else:
            types.pop(rtype, None)
        if not types:
            del records[name]
        _write_atomic(path, records)


def _rdata(rtype: str, value: str) -> Any:
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "CNAME":
        return CNAME(_norm(value))
    if rtype == "TXT":
        raw = value.encode("utf-8")
        return TXT([raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""])
    if rtype == "CAA":
        flags, tag, rest = value.strip().split(None, 2)
        rest = rest.strip()
        if len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        return CAA(int(flags), tag, rest)
    raise ValueError(f"unsupported record type {rtype!r}")


class _ZoneResolver:
    """dnslib resolver over the records file; any trouble answers SERVFAIL, never crashes."""

    def __init__(self, path: Path, default_a: str | None) -> None:
        self.path = path
        self.default_a = default_a

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()  # authoritative answer, AA set
        try:
            self._answer(request, reply)
        except Exception:
            reply = request.reply()
            reply.header.rcode = RCODE.SERVFAIL
        return reply

    def _exists(self, name: str, records: Records) -> bool:
        return name in records or any(other.endswith("." + name) for other in records)

    def _answer(self, request: DNSRecord, reply: DNSRecord) -> None:
        records = read_records(self.path)
        qname = _norm(str(request.q.qname))
        qtype = QTYPE[request.q.qtype]
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            data = records.get(name)
            if data is None:
                if self._exists(name, records):
                    return
                if self.default_a is not None:
                    if qtype == "A":
                        reply.add_answer(RR(name, QTYPE.A, rdata=A(self.default_a), ttl=TTL))
                    return
                if name == qname:
                    reply.header.rcode = RCODE.NXDOMAIN
                return
            if "RCODE" in data:
                reply.header.rcode = getattr(RCODE, data["RCODE"][0].upper())
                return
            if (
                qtype == "A"
                and self.default_a is not None
                and not ({"A", "AAAA", "CNAME"} & data.keys())
            ):
                reply.add_answer(RR(name, QTYPE.A, rdata=A(self.default_a), ttl=TTL))
                return
            if qtype in data:
                for value in data[qtype]:
                    rtype = getattr(QTYPE, qtype)
                    reply.add_answer(RR(name, rtype, rdata=_rdata(qtype, value), ttl=TTL))
                return
            if data.get("CNAME"):
                target = _norm(data["CNAME"][0])
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=TTL))
                name = target
                continue
            return


class _QuietLogger:
    """dnslib prints every query by default; tests want silence."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


class LoopbackDNS:
    """An authoritative DNS server on 127.0.0.1 (UDP and TCP on one free port), threaded.

    ``records_path`` is created empty if missing. ``default_a`` gives every name that is not in
    the file that A record. Use as a context manager, or ``start()``/``stop()``.
    """

    def __init__(
        self,
        records_path: Path | str,
        *,
        default_a: str | None = None,
        port: int = 0,
        address: str = "127.0.0.1",
    ) -> None:
        self.records_path = Path(records_path)
        self.default_a = default_a
        self.address = address
        self._wanted_port = port
        self._servers: list[DNSServer] = []
        self.port = 0

    def start(self) -> LoopbackDNS:
        """Bind UDP and TCP on the same port (a free one unless given) and serve in threads."""
        if self._servers:
            raise RuntimeError("already started")
        if not self.records_path.exists():
            self.records_path.parent.mkdir(parents=True, exist_ok=True)
            with _locked(self.records_path):
                if not self.records_path.exists():
                    _write_atomic(self.records_path, {})
        resolver = _ZoneResolver(self.records_path, self.default_a)
        last_error: OSError | None = None
        # A free UDP port may be taken for TCP by someone else: a few tries, then give up.
        for _ in range(20):
            udp = DNSServer(
                resolver, port=self._wanted_port, address=self.address, logger=_QuietLogger()
            )
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    resolver, port=port, address=self.address, tcp=True, logger=_QuietLogger()
                )
            except OSError as exc:
                udp.server.server_close()
                last_error = exc
                if self._wanted_port:
                    break
                continue
            self._servers = [udp, tcp]
            self.port = port
            for server in self._servers:
                # dnslib's start_thread polls for shutdown every 0.5 s; a short poll makes
                # stop() (once per test) near-instant.
                server.thread = threading.Thread(
                    target=server.server.serve_forever,
                    kwargs={"poll_interval": 0.02},
                    name=f"loopback-dns-{port}",
                    daemon=True,
                )
                server.thread.start()
            return self
        raise OSError(f"could not bind UDP and TCP on one port: {last_error}")

    def stop(self) -> None:
        """Stop both listeners and close their sockets (idempotent)."""
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
            server.thread.join(timeout=5)
        self._servers = []

    def __enter__(self) -> LoopbackDNS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def resolver(self) -> tuple[str, int]:
        """(host, port), the shape ``ValidationConfig.resolver`` takes."""
        return (self.address, self.port)

    def set(self, name: str, rtype: str, values: list[str]) -> None:
        """Replace every ``rtype`` record of ``name`` (an empty list removes them)."""
        update_records(self.records_path, name, rtype, lambda _old: list(values))

    def add(self, name: str, rtype: str, value: str) -> None:
        """Add one record (kept once: adding the same value twice keeps one)."""
        update_records(
            self.records_path, name, rtype, lambda old: old if value in old else [*old, value]
        )

    def remove(self, name: str, rtype: str, value: str | None = None) -> None:
        """Remove one record, or every ``rtype`` record of ``name`` when ``value`` is None."""
        update_records(
            self.records_path,
            name,
            rtype,
            lambda old: [] if value is None else [v for v in old if v != value],
        )

    def records(self) -> Records:
        """The zone as currently stored."""
        return read_records(self.records_path)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``serve``, or lego's exec-provider calls ``present``/``cleanup``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.acme.dns_server", description=__doc__ and __doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("present", "cleanup"):
        p = sub.add_parser(command, help=f"{command} the TXT record FQDN=VALUE")
        p.add_argument("fqdn")
        p.add_argument("value")
        p.add_argument("--records", required=True, type=Path)
    serve = sub.add_parser("serve", help="serve RECORDS on 127.0.0.1 until SIGTERM/SIGINT")
    serve.add_argument("--records", required=True, type=Path)
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--default-a", default=None)
    args = parser.parse_args(argv)

    if args.command == "present":
        update_records(
            args.records,
            args.fqdn,
            "TXT",
            lambda old: old if args.value in old else [*old, args.value],
        )
        return 0
    if args.command == "cleanup":
        update_records(
            args.records, args.fqdn, "TXT", lambda old: [v for v in old if v != args.value]
        )
        return 0

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with LoopbackDNS(args.records, default_a=args.default_a, port=args.port) as server:
        print(f"port={server.port}", flush=True)
        while not stop.wait(1.0):
            pass
    return 0


__all__ = ["LoopbackDNS", "main", "read_records", "update_records"]

if __name__ == "__main__":
    sys.exit(main())
