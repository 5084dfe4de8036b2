"""The trust stores a dev machine reads, one class each: the system store, NSS, Java.

Each store installs a :class:`Root` and tells what it did as :class:`Outcome` records; an
outcome that added something carries the manifest entry (``manifest.py``) that lets
``uninstall`` remove exactly that later. Removal checks the SHA-256 of what it is about to
delete, so a file, nickname or alias that someone reused since is left alone.

The stores run the platform's own tools (``update-ca-certificates``, ``certutil``,
``keytool``) rather than editing their files: those tools know the formats and the locks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ca_service.trust.fetch import Root

TOOL_TIMEOUT = 120
SUDO_HINT = "run with sudo for the system store, or --no-system"
DEFAULT_SYSTEM_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_UPDATE_COMMAND = ("update-ca-certificates",)
JAVA_STOREPASS = "changeit"

# Documented, not run: these need an administrator's session and a GUI prompt on some versions.
MACOS_COMMAND = (
    "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain ROOT.pem"
)
WINDOWS_COMMAND = "certutil -addstore -f Root ROOT.pem   (in an elevated prompt)"
OTHER_LINUX_COMMAND = "sudo cp ROOT.pem /etc/pki/ca-trust/source/anchors/ && sudo update-ca-trust"

Entry = dict[str, Any]


@dataclass
class Outcome:
    """What one store did (or would do) with one root.

    ``action`` is one of: added, present, would-add, removed, would-remove, gone, changed,
    skipped, refused. Only ``refused`` makes the command fail (exit 1).
    """

    store: str
    location: str
    action: str
    detail: str = ""
    entry: Entry | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, str]:
        return {
            "store": self.store,
            "location": self.location,
            "action": self.action,
            "detail": self.detail,
        }


class ToolError(Exception):
    """A store's tool failed; the message is its last line of output, for one-line errors."""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{argv[0]} did not finish within {TOOL_TIMEOUT} s") from None


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    # keytool and certutil put the reason on their last non-empty line.
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _checked(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    proc = _run(argv)
    if proc.returncode != 0:
        raise ToolError(f"{Path(argv[0]).name} failed: {_last_line(proc)}")
    return proc


def _sha256_of_pem(text: str) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(text.encode())
    except ValueError:
        return None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _sha256_of_file(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"-----BEGIN" in data:
        return _sha256_of_pem(data.decode(errors="replace"))
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError:
        return None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@contextmanager
def _pem_file(root: Root) -> Iterator[Path]:
    """The root in a temporary PEM file, for tools that read certificates only from files."""
    with tempfile.TemporaryDirectory(prefix="ca-service-trust-") as tmp:
        path = Path(tmp) / f"ca-service-{root.fp8}.pem"
        path.write_text(root.pem)
        yield path


def _entry(store: str, location: str, root: Root, **extra: Any) -> Entry:
    return {
        "store": store,
        "location": location,
        "sha256": root.sha256,
        "subject": root.subject,
        "added_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def _refusal_hint(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason}; {SUDO_HINT}"


# --------------------------------------------------------------------------------- system store


class SystemStore:
    """The OS store: on Debian-like systems a .crt in /usr/local/share/ca-certificates, then
    ``update-ca-certificates`` rebuilds /etc/ssl/certs and its bundle (what curl, OpenSSL,
    Python and most CLI tools read). Other systems get the documented command, not a guess."""

    kind = "system"

    def __init__(
        self,
        directory: Path | None = None,
        update_command: Sequence[str] | None = None,
        *,
        platform: str = sys.platform,
    ) -> None:
        self.explicit = directory is not None
        self.directory = directory or DEFAULT_SYSTEM_DIR
        self.update_command = list(update_command) if update_command else None
        self.platform = platform

    def _command(self) -> list[str]:
        return self.update_command or list(DEFAULT_UPDATE_COMMAND)

    def _unsupported(self) -> str | None:
        """Why this machine's store is not one we manage, with the command to run instead."""
        if self.platform == "darwin":
            return f"macOS: run {MACOS_COMMAND}"
        if self.platform.startswith("win"):
            return f"Windows: run {WINDOWS_COMMAND}"
        if self.explicit or self.update_command:
            return None
        if shutil.which(self._command()[0]) is None or not self.directory.is_dir():
            return f"no update-ca-certificates here; on Fedora/RHEL run {OTHER_LINUX_COMMAND}"
        return None

    def target(self, root: Root) -> Path:
        return self.directory / f"ca-service-{root.name}-{root.fp8}.crt"

    def install(self, root: Root, *, dry_run: bool) -> Outcome:
        unsupported = self._unsupported()
        if unsupported:
            return Outcome(self.kind, str(self.directory), "skipped", unsupported)
        path = self.target(root)
        command = self._command()
        if _sha256_of_file(path) == root.sha256:
            return Outcome(self.kind, str(path), "present")
        if dry_run:
            return Outcome(self.kind, str(path), "would-add", f"then run: {shlex.join(command)}")
        if not self.directory.is_dir():
            reason = "not a directory" if self.directory.exists() else "no such directory"
            return Outcome(
                self.kind, str(self.directory), "refused", f"{reason} (--system-dir); {SUDO_HINT}"
            )
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(root.pem)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return Outcome(self.kind, str(path), "refused", _refusal_hint(exc))
        try:
            _checked(command)
        except ToolError as exc:
            # Without the rebuild the file trusts nothing yet; take it back so nothing is half done.
            path.unlink(missing_ok=True)
            return Outcome(self.kind, str(path), "refused", f"{exc}; {SUDO_HINT}")
        entry = _entry(self.kind, str(path), root, update_command=command)
        return Outcome(self.kind, str(path), "added", f"ran {shlex.join(command)}", entry)

    def present(self, entry: Entry) -> bool:
        return bool(_sha256_of_file(Path(entry["location"])) == entry["sha256"])

    def uninstall(self, entries: list[Entry], *, dry_run: bool) -> list[Outcome]:
        outcomes = []
        commands: list[list[str]] = []
        for entry in entries:
            path = Path(entry["location"])
            command = self.update_command or _removal_command(entry.get("update_command"))
            found = _sha256_of_file(path)
            if found is None and not path.exists():
                outcomes.append(Outcome(self.kind, str(path), "gone", "already removed", entry))
                continue
            if found != entry["sha256"]:
                detail = "holds another certificate now: left alone"
                outcomes.append(Outcome(self.kind, str(path), "changed", detail, entry))
                continue
            if dry_run:
                detail = f"then run: {shlex.join(command)}"
                outcomes.append(Outcome(self.kind, str(path), "would-remove", detail, entry))
                continue
            try:
                path.unlink()
            except OSError as exc:
                outcomes.append(Outcome(self.kind, str(path), "refused", _refusal_hint(exc)))
                continue
            if command not in commands:
                commands.append(command)
            detail = f"ran {shlex.join(command)}"
            outcomes.append(Outcome(self.kind, str(path), "removed", detail, entry))
        for command in commands:
            try:
                _checked(command)
            except ToolError as exc:
                outcomes.append(Outcome(self.kind, shlex.join(command), "refused", str(exc)))
        return outcomes


def _removal_command(recorded: Sequence[str] | None) -> list[str]:
    """The recorded rebuild command; the stock one gets --fresh on removal, since without it
    Debian's script leaves the dangling /etc/ssl/certs links of a removed file behind."""
    command = list(recorded or DEFAULT_UPDATE_COMMAND)
    if Path(command[0]).name == "update-ca-certificates" and "--fresh" not in command:
        command.append("--fresh")
    return command


# ------------------------------------------------------------------------------------------ NSS


def discover_nss_dbs(home: Path | None = None) -> list[Path]:
    """The SQL-format NSS databases of this user's browsers: Chrome/Chromium on Linux share
    ~/.pki/nssdb; each Firefox profile has its own (deb, snap and flatpak installs)."""
    home = home or Path.home()
    candidates = [
        home / ".pki" / "nssdb",
        home / "snap" / "chromium" / "current" / ".pki" / "nssdb",
    ]
    for base in (
        home / ".mozilla" / "firefox",
        home / "snap" / "firefox" / "common" / ".mozilla" / "firefox",
        home / ".var" / "app" / "org.mozilla.firefox" / ".mozilla" / "firefox",
    ):
        if base.is_dir():
            candidates += sorted(p for p in base.glob("*.default*") if p.is_dir())
    return [p for p in candidates if (p / "cert9.db").is_file()]


class NSSStore:
    """NSS databases (Chrome/Chromium, Firefox) through ``certutil`` from libnss3-tools."""

    kind = "nss"

    def __init__(self, databases: Sequence[Path] | None = None, *, home: Path | None = None):
        self.explicit = databases is not None and len(databases) > 0
        self.databases = list(databases) if self.explicit and databases else None
        self.home = home

    @staticmethod
    def nickname(root: Root) -> str:
        return f"ca-service-{root.name}-{root.fp8}"

    @staticmethod
    def _db(path: Path | str) -> str:
        text = str(path)
        return text if text.startswith("sql:") else f"sql:{text}"

    def _certutil(self) -> str | None:
        return shutil.which("certutil")

    def _held(self, certutil: str, db: str, nickname: str) -> str | None:
        """The SHA-256 of the certificate under ``nickname`` in ``db``, or None."""
        proc = _run([certutil, "-L", "-d", db, "-n", nickname, "-a"])
        if proc.returncode != 0:
            return None
        return _sha256_of_pem(proc.stdout)

    def install(self, root: Root, *, dry_run: bool) -> list[Outcome]:
        databases = self.databases if self.databases is not None else discover_nss_dbs(self.home)
        if not databases:
            where = str(self.home or Path.home())
            return [Outcome(self.kind, where, "skipped", "no NSS databases found (--nss-db DIR)")]
        certutil = self._certutil()
        if certutil is None:
            action = "refused" if self.explicit else "skipped"
            detail = "certutil not found: install libnss3-tools (Debian) or nss-tools"
            return [Outcome(self.kind, ", ".join(map(str, databases)), action, detail)]
        nickname = self.nickname(root)
        outcomes = []
        for path in databases:
            db = self._db(path)
            held = self._held(certutil, db, nickname)
            if held == root.sha256:
                outcomes.append(Outcome(self.kind, db, "present", f"as {nickname!r}"))
                continue
            if held is not None:
                detail = f"{nickname!r} holds another certificate: left alone"
                outcomes.append(Outcome(self.kind, db, "refused", detail))
                continue
            if dry_run:
                detail = f"as {nickname!r}, trusted for TLS servers (C,,)"
                outcomes.append(Outcome(self.kind, db, "would-add", detail))
                continue
            if not Path(db[4:], "cert9.db").is_file():
                detail = "no cert9.db there (create one with certutil -N)"
                outcomes.append(Outcome(self.kind, db, "refused", detail))
                continue
            try:
                with _pem_file(root) as pem:
                    _checked(
                        [certutil, "-A", "-n", nickname, "-t", "C,,", "-i", str(pem), "-d", db]
                    )
            except ToolError as exc:
                outcomes.append(Outcome(self.kind, db, "refused", str(exc)))
                continue
            if self._held(certutil, db, nickname) != root.sha256:
                # NSS keeps one nickname per certificate: it was there already under another.
                detail = "already in this database under another nickname: left alone"
                outcomes.append(Outcome(self.kind, db, "present", detail))
                continue
            entry = _entry(self.kind, db, root, nickname=nickname)
            outcomes.append(Outcome(self.kind, db, "added", f"as {nickname!r}", entry))
        return outcomes

    def present(self, entry: Entry) -> bool:
        certutil = self._certutil()
        if certutil is None:
            return False
        return bool(self._held(certutil, entry["location"], entry["nickname"]) == entry["sha256"])

    def uninstall(self, entries: list[Entry], *, dry_run: bool) -> list[Outcome]:
        certutil = self._certutil()
        outcomes = []
        for entry in entries:
            db, nickname = entry["location"], entry["nickname"]
            if certutil is None:
                detail = "certutil not found: install libnss3-tools (Debian) or nss-tools"
                outcomes.append(Outcome(self.kind, db, "refused", detail))
                continue
            held = self._held(certutil, db, nickname)
            if held is None:
                outcomes.append(
                    Outcome(self.kind, db, "gone", f"{nickname!r} already removed", entry)
                )
                continue
            if held != entry["sha256"]:
                detail = f"{nickname!r} holds another certificate now: left alone"
                outcomes.append(Outcome(self.kind, db, "changed", detail, entry))
                continue
            if dry_run:
                outcomes.append(Outcome(self.kind, db, "would-remove", f"{nickname!r}", entry))
                continue
            try:
                _checked([certutil, "-D", "-n", nickname, "-d", db])
            except ToolError as exc:
                outcomes.append(Outcome(self.kind, db, "refused", str(exc)))
                continue
            outcomes.append(Outcome(self.kind, db, "removed", f"{nickname!r}", entry))
        return outcomes


# ----------------------------------------------------------------------------------------- Java


class JavaStore:
    """Java's cacerts through ``keytool``: the JDK's own (``-cacerts``) or ``--java-cacerts``."""

    kind = "java"
    # How the JDK's own store is named in outcomes and in the record (keytool -cacerts).
    DEFAULT = "the JDK's cacerts (keytool -cacerts)"

    def __init__(self, cacerts: Path | None = None, *, storepass: str = JAVA_STOREPASS) -> None:
        self.cacerts = cacerts
        self.storepass = storepass

    @staticmethod
    def alias(root: Root) -> str:
        return f"ca-service-{root.fp8}"

    def _location(self) -> str:
        return str(self.cacerts) if self.cacerts is not None else self.DEFAULT

    def _store_args(self, location: str) -> list[str]:
        where = ["-cacerts"] if location == self.DEFAULT else ["-keystore", location]
        return [*where, "-storepass", self.storepass]

    def _held(self, keytool: str, location: str, alias: str) -> str | None:
        proc = _run([keytool, "-exportcert", "-rfc", "-alias", alias, *self._store_args(location)])
        if proc.returncode != 0:
            return None
        return _sha256_of_pem(proc.stdout)

    def install(self, root: Root, *, dry_run: bool) -> Outcome:
        keytool = shutil.which("keytool")
        location = self._location()
        if keytool is None:
            if self.cacerts is not None:
                return Outcome(self.kind, location, "refused", "keytool is not on PATH")
            return Outcome(self.kind, location, "skipped", "keytool is not on PATH")
        if self.cacerts is not None and not self.cacerts.is_file():
            return Outcome(self.kind, location, "refused", "no such keystore (--java-cacerts)")
        alias = self.alias(root)
        held = self._held(keytool, location, alias)
        if held == root.sha256:
            return Outcome(self.kind, location, "present", f"as alias {alias!r}")
        if held is not None:
            return Outcome(
                self.kind, location, "refused", f"alias {alias!r} holds another certificate"
            )
        if dry_run:
            return Outcome(self.kind, location, "would-add", f"as alias {alias!r}")
        try:
            with _pem_file(root) as pem:
                args = ["-importcert", "-noprompt", "-alias", alias, "-file", str(pem)]
                _checked([keytool, *args, *self._store_args(location)])
        except ToolError as exc:
            detail = str(exc)
            if self.cacerts is None:
                detail += "; run with sudo for the JDK's cacerts, or --no-java"
            return Outcome(self.kind, location, "refused", detail)
        entry = _entry(self.kind, location, root, alias=alias)
        return Outcome(self.kind, location, "added", f"as alias {alias!r}", entry)

    def present(self, entry: Entry) -> bool:
        keytool = shutil.which("keytool")
        if keytool is None:
            return False
        return bool(self._held(keytool, entry["location"], entry["alias"]) == entry["sha256"])

    def uninstall(self, entries: list[Entry], *, dry_run: bool) -> list[Outcome]:
        keytool = shutil.which("keytool")
        outcomes = []
        for entry in entries:
            location, alias = entry["location"], entry["alias"]
            if keytool is None:
                outcomes.append(Outcome(self.kind, location, "refused", "keytool is not on PATH"))
                continue
            held = self._held(keytool, location, alias)
            if held is None:
                detail = f"alias {alias!r} already removed"
                outcomes.append(Outcome(self.kind, location, "gone", detail, entry))
                continue
            if held != entry["sha256"]:
                detail = f"alias {alias!r} holds another certificate now: left alone"
                outcomes.append(Outcome(self.kind, location, "changed", detail, entry))
                continue
            if dry_run:
                detail = f"alias {alias!r}"
                outcomes.append(Outcome(self.kind, location, "would-remove", detail, entry))
                continue
            try:
                _checked([keytool, "-delete", "-alias", alias, *self._store_args(location)])
            except ToolError as exc:
                outcomes.append(Outcome(self.kind, location, "refused", str(exc)))
                continue
            outcomes.append(Outcome(self.kind, location, "removed", f"alias {alias!r}", entry))
        return outcomes
