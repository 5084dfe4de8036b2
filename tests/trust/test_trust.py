"""`ca-service trust install|uninstall` against real stores in temporary places.

One live HTTPS ca-service per module; the system store is Debian's own update-ca-certificates
run on temporary directories, NSS a database made by certutil -N, Java a copy of a keystore
made by keytool. Each check asserts the store accepts the served certificate only after install,
and that uninstall gives back exactly the listing from before.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..live import CA_SERVICE, LiveServer, start_server


def _needs(tool: str) -> pytest.MarkDecorator:
    """Skip on a developer machine without ``tool``; in CI (.ci/run installs every one of
    them) a missing tool fails the test instead of silently skipping it."""
    return pytest.mark.skipif(
        shutil.which(tool) is None and not os.environ.get("CI"), reason=f"no {tool}"
    )


needs_certutil = _needs("certutil")
needs_keytool = _needs("keytool")
needs_update = _needs("update-ca-certificates")


def run(*argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    base = tmp_path_factory.mktemp("trust")
    server = start_server(base / "data", f"sqlite:///{base / 'ca.db'}", tls=True, workers=1)
    yield server
    server.stop()


def fingerprint(live: LiveServer, colons: bool = True) -> str:
    assert live.root_pem is not None
    der = x509.load_pem_x509_certificate(live.root_pem.encode()).public_bytes(Encoding.DER)
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, 64, 2)) if colons else digest.lower()


def served_chain(live: LiveServer) -> list[str]:
    """What the server sends in its handshake (leaf first), as a browser receives it."""
    proc = run("openssl", "s_client", "-connect", f"127.0.0.1:{live.port}", "-showcerts",
               check=True)  # fmt: skip
    end = "-----END CERTIFICATE-----"
    blocks = [b[b.index("-----BEGIN") :] + end for b in proc.stdout.split(end)[:-1]]
    assert (
        blocks
        and blocks[0].strip()
        == ssl.get_server_certificate(("127.0.0.1", live.port), timeout=10).strip()
    )
    return blocks


@dataclass
class System:
    """A Debian system store in temp dirs: the local .crt dir, /etc/ssl/certs and its bundle,
    with unrelated CAs already trusted (so the bundle exists before and after)."""

    local: Path
    etc: Path
    command: str

    @property
    def bundle(self) -> Path:
        return self.etc / "ca-certificates.crt"

    def listing(self) -> tuple[list[tuple[str, str]], str, list[str]]:
        links = sorted(
            (p.name, os.readlink(p) if p.is_symlink() else "file") for p in self.etc.iterdir()
        )
        bundle = self.bundle.read_text() if self.bundle.exists() else ""
        return links, bundle, sorted(p.name for p in self.local.iterdir())


def _other_ca(path: Path) -> None:
    key = path.with_suffix(".key")
    run(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(path), "-days", "30",
        "-subj", "/CN=unrelated test CA", check=True,
    )  # fmt: skip


@pytest.fixture
def system(tmp_path: Path) -> System:
    share, local, etc, hooks = (tmp_path / n for n in ("share", "local", "etc", "hooks"))
    for d in (share, local, etc, hooks):
        d.mkdir()
    # Two CAs, as in a real store: openssl rehash skips a bundle of several certificates, but
    # would hash a bundle of one as if it were a CA file of its own.
    _other_ca(share / "other.crt")
    _other_ca(share / "another.crt")
    conf = tmp_path / "ca-certificates.conf"
    conf.write_text("other.crt\nanother.crt\n")
    command = shlex.join(
        [
            "update-ca-certificates", "--fresh", "--certsconf", str(conf),
            "--certsdir", str(share), "--localcertsdir", str(local),
            "--etccertsdir", str(etc), "--hooksdir", str(hooks),
        ]
    )  # fmt: skip
    run(*shlex.split(command), check=True)
    return System(local, etc, command)


@pytest.fixture
def nssdb(tmp_path: Path) -> Path:
    db = tmp_path / "nssdb"
    db.mkdir()
    run("certutil", "-N", "--empty-password", "-d", f"sql:{db}", check=True)
    return db


def nss_accepts(db: Path, chain: list[str]) -> bool:
    """certutil -V on the served leaf; it and the served intermediates are imported without
    trust of their own (",,"), so only a trusted root can make the chain valid."""
    for i, pem in enumerate(chain):
        nick = "served-leaf" if i == 0 else f"served-ca-{i}"
        path = db.parent / f"{nick}.pem"
        path.write_text(pem)
        if run("certutil", "-L", "-d", f"sql:{db}", "-n", nick).returncode != 0:
            run("certutil", "-A", "-n", nick, "-t", ",,", "-i", str(path), "-d", f"sql:{db}",
                check=True)  # fmt: skip
    return run("certutil", "-V", "-u", "V", "-n", "served-leaf", "-d", f"sql:{db}").returncode == 0


def nss_listing(db: Path) -> str:
    return run("certutil", "-L", "-d", f"sql:{db}", check=True).stdout


def java_listing(store: Path) -> str:
    return run("keytool", "-list", "-keystore", str(store), "-storepass", "changeit",
               check=True).stdout  # fmt: skip


def curl_ok(live: LiveServer, bundle: Path) -> bool:
    proc = run("curl", "-sS", "--max-time", "20", "--cacert", str(bundle),
               f"https://127.0.0.1:{live.port}/healthz")  # fmt: skip
    return proc.returncode == 0 and '"status"' in proc.stdout


def trust(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CA_")}
    if home is not None:
        env["HOME"] = str(home)
        env.pop("XDG_CONFIG_HOME", None)
    return subprocess.run(
        [CA_SERVICE, "trust", *args], capture_output=True, text=True, timeout=180, check=False,
        env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- the tests


@needs_update
@needs_certutil
def test_install_then_uninstall_system_nss_java(
    live: LiveServer, system: System, nssdb: Path, tmp_path: Path
) -> None:
    state = tmp_path / "trust.json"
    leaf = served_chain(live)
    before_system = system.listing()
    assert not curl_ok(live, system.bundle)
    assert not nss_accepts(nssdb, leaf)
    nss_with_leaf = nss_listing(nssdb)  # the served certificates, without trust of their own
    java = ["--no-java"]
    keystore = None
    if shutil.which("keytool"):
        keystore = tmp_path / "cacerts"
        _make_keystore(tmp_path, keystore)
        java = ["--java-cacerts", str(keystore)]
        before_java = java_listing(keystore)

    common = ["--system-dir", str(system.local), "--update-command", system.command,
              "--nss-db", str(nssdb), *java, "--state", str(state)]  # fmt: skip
    result = trust("install", "--server", live.base_url, "--root-fingerprint",
                   fingerprint(live), *common, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    actions = {r["store"]: r["action"] for r in doc["results"]}
    expected = {"system": "added", "nss": "added"} | ({"java": "added"} if keystore else {})
    assert actions == expected, doc
    assert doc["root"]["sha256"] == fingerprint(live, colons=False)

    assert curl_ok(live, system.bundle)
    assert nss_accepts(nssdb, leaf)
    added = [p.name for p in system.local.iterdir()]
    assert len(added) == 1 and added[0].startswith("ca-service-") and added[0].endswith(".crt")
    if keystore is not None:
        assert "ca-service-" in java_listing(keystore)

    # Twice: reported as present, nothing duplicated, the record unchanged in size.
    entries = json.loads(state.read_text())["entries"]
    assert len(entries) == (3 if keystore else 2)
    again = trust("install", "--root-fingerprint", fingerprint(live, colons=False),
                  "--server", live.base_url, *common)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already present") == (3 if keystore else 2), again.stdout
    assert len(json.loads(state.read_text())["entries"]) == len(entries)
    assert [p.name for p in system.local.iterdir()] == added
    assert system.bundle.read_text().count(live.root_pem.strip().splitlines()[1]) == 1
    if keystore is not None:
        assert java_listing(keystore).count("ca-service-") == 1

    status = trust("status", "--state", str(state))
    assert status.returncode == 0 and status.stdout.count("present") == len(entries)

    # Uninstall: every store exactly as before, the record emptied.
    gone = trust("uninstall", "--state", str(state))
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.count("removed") == len(entries), gone.stdout
    assert system.listing() == before_system
    assert not curl_ok(live, system.bundle)
    assert not nss_accepts(nssdb, leaf)
    assert nss_listing(nssdb) == nss_with_leaf
    assert "ca-service-" not in nss_listing(nssdb)
    if keystore is not None:
        assert java_listing(keystore) == before_java
    assert json.loads(state.read_text())["entries"] == []

    # And nothing left to do: a message, exit 0.
    nothing = trust("uninstall", "--state", str(state))
    assert nothing.returncode == 0 and "nothing to uninstall" in nothing.stdout


def _make_keystore(tmp_path: Path, store: Path) -> None:
    other = tmp_path / "other-java.crt"
    _other_ca(other)
    run("keytool", "-importcert", "-noprompt", "-alias", "other", "-file", str(other),
        "-keystore", str(store), "-storepass", "changeit", "-storetype", "PKCS12",
        check=True)  # fmt: skip


@needs_update
def test_root_file_into_system_store(live: LiveServer, system: System, tmp_path: Path) -> None:
    root = tmp_path / "root.pem"
    assert live.root_pem is not None
    root.write_text(live.root_pem)
    state = tmp_path / "s.json"
    result = trust("install", "--root", str(root), "--system-dir", str(system.local),
                   "--update-command", system.command, "--no-nss", "--no-java",
                   "--state", str(state))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert curl_ok(live, system.bundle)
    assert trust("uninstall", "--state", str(state)).returncode == 0
    assert not curl_ok(live, system.bundle)


@needs_update
@needs_certutil
def test_wrong_fingerprint_exits_3_and_adds_nothing(
    live: LiveServer, system: System, nssdb: Path, tmp_path: Path
) -> None:
    before = system.listing(), nss_listing(nssdb)
    wrong = "00" * 31 + "01"
    state = tmp_path / "trust.json"
    result = trust("install", "--server", live.base_url, "--root-fingerprint", wrong,
                   "--system-dir", str(system.local), "--update-command", system.command,
                   "--nss-db", str(nssdb), "--no-java", "--state", str(state))  # fmt: skip
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "nothing was installed" in result.stderr
    assert (system.listing(), nss_listing(nssdb)) == before
    assert not state.exists()


@needs_update
@needs_certutil
def test_dry_run_prints_the_plan_and_changes_nothing(
    live: LiveServer, system: System, nssdb: Path, tmp_path: Path
) -> None:
    before = system.listing(), nss_listing(nssdb)
    state = tmp_path / "trust.json"
    result = trust("install", "--server", live.base_url, "--root-fingerprint", fingerprint(live),
                   "--system-dir", str(system.local), "--update-command", system.command,
                   "--nss-db", str(nssdb), "--no-java", "--state", str(state),
                   "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "system: would add " + str(system.local) in result.stdout
    assert f"nss: would add sql:{nssdb}" in result.stdout
    assert "update-ca-certificates" in result.stdout
    assert "dry run: nothing was changed" in result.stdout
    assert (system.listing(), nss_listing(nssdb)) == before
    assert not state.exists()


@needs_update
def test_uninstall_dry_run_keeps_everything(
    live: LiveServer, system: System, tmp_path: Path
) -> None:
    state = tmp_path / "trust.json"
    args = ["--system-dir", str(system.local), "--update-command", system.command, "--no-nss",
            "--no-java", "--state", str(state)]  # fmt: skip
    installed = trust("install", "--server", live.base_url, "--root-fingerprint",
                      fingerprint(live), *args)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    after = system.listing()
    plan = trust("uninstall", "--state", str(state), "--dry-run")
    assert plan.returncode == 0 and "would remove" in plan.stdout
    assert system.listing() == after and curl_ok(live, system.bundle)
    assert len(json.loads(state.read_text())["entries"]) == 1
    assert trust("uninstall", "--state", str(state)).returncode == 0
    assert not curl_ok(live, system.bundle)


def test_uninstall_with_nothing_installed(tmp_path: Path) -> None:
    result = trust("uninstall", "--state", str(tmp_path / "none.json"))
    assert result.returncode == 0 and "nothing to uninstall" in result.stdout
    status = trust("status", "--state", str(tmp_path / "none.json"))
    assert status.returncode == 0 and "nothing installed" in status.stdout


def test_unwritable_system_dir_exits_1_with_the_hint(live: LiveServer, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    state = tmp_path / "trust.json"
    result = trust("install", "--server", live.base_url, "--root-fingerprint", fingerprint(live),
                   "--system-dir", str(not_a_dir), "--update-command", "true", "--no-nss",
                   "--no-java", "--state", str(state))  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "run with sudo for the system store, or --no-system" in result.stderr
    assert not_a_dir.read_text() == "x" and not state.exists()


def test_failing_update_command_takes_the_file_back(live: LiveServer, tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    state = tmp_path / "trust.json"
    result = trust("install", "--server", live.base_url, "--root-fingerprint", fingerprint(live),
                   "--system-dir", str(local), "--update-command", "false", "--no-nss",
                   "--no-java", "--state", str(state))  # fmt: skip
    assert result.returncode == 1
    assert list(local.iterdir()) == [] and not state.exists()


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither --server nor --root
        ["--server", "https://127.0.0.1:1"],  # no fingerprint
        ["--server", "https://127.0.0.1:1", "--root-fingerprint", "abc"],
        ["--server", "ftp://x", "--root-fingerprint", "ab" * 32],
        ["--root", "/nonexistent/root.pem"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = trust("install", *args, "--no-nss", "--no-java", "--no-system",
                   "--state", str(tmp_path / "s.json"))  # fmt: skip
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    from ..live import free_port

    result = trust("install", "--server", f"https://127.0.0.1:{free_port()}",
                   "--root-fingerprint", "ab" * 32, "--no-nss", "--no-java",
                   "--state", str(tmp_path / "s.json"))  # fmt: skip
    assert result.returncode == 3
    assert result.stderr.startswith("error: cannot reach")


@needs_certutil
def test_nss_databases_are_discovered_under_home(live: LiveServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    chromium = home / ".pki" / "nssdb"
    firefox = home / ".mozilla" / "firefox" / "abcd.default-release"
    for db in (chromium, firefox):
        db.mkdir(parents=True)
        run("certutil", "-N", "--empty-password", "-d", f"sql:{db}", check=True)
    (home / ".mozilla" / "firefox" / "not-a-profile").mkdir()
    result = trust("install", "--server", live.base_url, "--root-fingerprint", fingerprint(live),
                   "--no-system", "--no-java", home=home)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"sql:{chromium}" in result.stdout and f"sql:{firefox}" in result.stdout
    state = home / ".config" / "ca-service" / "trust.json"
    assert len(json.loads(state.read_text())["entries"]) == 2
    assert "ca-service-" in nss_listing(chromium)
    assert trust("uninstall", home=home).returncode == 0
    assert "ca-service-" not in nss_listing(chromium) + nss_listing(firefox)


@needs_certutil
def test_uninstall_leaves_a_reused_nickname_alone(
    live: LiveServer, nssdb: Path, tmp_path: Path
) -> None:
    state = tmp_path / "trust.json"
    args = ["--no-system", "--no-java", "--nss-db", str(nssdb), "--state", str(state)]
    assert trust("install", "--server", live.base_url, "--root-fingerprint", fingerprint(live),
                 *args).returncode == 0  # fmt: skip
    nickname = json.loads(state.read_text())["entries"][0]["nickname"]
    other = tmp_path / "other.crt"
    _other_ca(other)
    run("certutil", "-D", "-n", nickname, "-d", f"sql:{nssdb}", check=True)
    run("certutil", "-A", "-n", nickname, "-t", "C,,", "-i", str(other), "-d", f"sql:{nssdb}",
        check=True)  # fmt: skip
    result = trust("uninstall", "--state", str(state))
    assert result.returncode == 0 and "left alone" in result.stdout
    assert nickname in nss_listing(nssdb)
