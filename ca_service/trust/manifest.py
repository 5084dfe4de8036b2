"""The record of what ``trust install`` added, so ``trust uninstall`` removes that and no more.

One JSON file (``~/.config/ca-service/trust.json``, or ``--state FILE``): a list of entries, each
naming a store, where in it (file, NSS database, keystore), the nickname or alias, and the
SHA-256 of the root. A root that was already in a store before we came is never recorded, so
uninstall cannot take away trust someone else set up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ca_service.errors import CAError

VERSION = 1
Entry = dict[str, Any]


class ManifestError(CAError):
    """The state file cannot be read or written: exit 1 with its path."""

    code = "trust-state"
    title = "Trust state file"


def default_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "ca-service" / "trust.json"


def _key(entry: Entry) -> tuple[str, str, str]:
    ident = entry.get("nickname") or entry.get("alias") or ""
    return (entry["store"], entry["location"], ident)


class Manifest:
    def __init__(self, path: Path, entries: list[Entry] | None = None) -> None:
        self.path = path
        self.entries: list[Entry] = entries or []

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            entries = data["entries"]
            if data.get("version") != VERSION or not isinstance(entries, list):
                raise ValueError
            for e in entries:
                if not isinstance(e, dict) or not {"store", "location", "sha256"} <= e.keys():
                    raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ManifestError(f"{path} is not a ca-service trust state file") from None
        return cls(path, entries)

    def add(self, entry: Entry) -> None:
        """Record ``entry``, replacing an older record of the same place (never a duplicate)."""
        self.entries = [e for e in self.entries if _key(e) != _key(entry)]
        self.entries.append(entry)

    def discard(self, entry: Entry) -> None:
        self.entries = [e for e in self.entries if _key(e) != _key(entry)]

    def has(self, store: str, location: str, ident: str = "") -> bool:
        return any(_key(e) == (store, location, ident) for e in self.entries)

    def save(self) -> None:
        """Write atomically: a crash leaves the old record or the new one, never half of one."""
        try:
            if not self.entries and not self.path.exists():
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps({"version": VERSION, "entries": self.entries}, indent=2))
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ManifestError(f"cannot write {self.path}: {exc.strerror or exc}") from None
