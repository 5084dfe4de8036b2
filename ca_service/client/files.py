"""The files a request leaves behind, written so that no reader ever sees half of one.

Every file is written to a temporary file in its own directory (same file system, so
``os.replace`` is atomic), flushed to disk, and only then renamed over the old one; the
directory is synced after the renames. A private key's temporary file is created 0600 by
``os.open`` itself: it is never, even for an instant, readable by another user.

Two files cannot be replaced in one atomic step. The order (chain, key, certificate,
fullchain) and the check in ``flow`` close that gap: a run that finds a key that does not match
the certificate (a crash between two renames) issues a fresh pair instead of saying "nothing
to do". A PKCS#12 file holds key and certificate together and is replaced in one step.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ca_service.client.errors import ClientError

PRIVATE = 0o600
PUBLIC = 0o644


@dataclass(frozen=True)
class Staged:
    """A temporary file, complete and on disk, waiting to become ``final``."""

    temp: Path
    final: Path


def stage(final: Path, data: bytes, mode: int) -> Staged:
    """Write ``data`` to a fresh temporary file next to ``final``, created with ``mode``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write into a file (or through a symlink) someone else put there first.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, mode)
    try:
        # The umask may only have removed bits; a private file is exactly 0600 either way.
        if mode == PRIVATE:
            os.fchmod(fd, PRIVATE)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return Staged(temp, final)


def commit(staged: Iterable[Staged]) -> None:
    """Rename every staged file over its final name, in order, then sync the directories."""
    directories: set[Path] = set()
    for item in staged:
        os.replace(item.temp, item.final)
        directories.add(item.final.parent)
    for directory in directories:
        _fsync_dir(directory)


def discard(staged: Iterable[Staged]) -> None:
    for item in staged:
        item.temp.unlink(missing_ok=True)


@contextlib.contextmanager
def staging() -> Iterator[list[Staged]]:
    """A list to stage into; whatever is still staged when the block fails is removed."""
    items: list[Staged] = []
    try:
        yield items
    except BaseException:
        discard(items)
        raise


def write_atomic(final: Path, data: bytes, mode: int = PUBLIC) -> None:
    with staging() as items:
        items.append(stage(final, data, mode))
        commit(items)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not every platform opens directories; the renames are done regardless
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path, wait: float) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created 0600), waiting at most ``wait`` seconds.

    Two runs for the same PREFIX at once (cron and a deploy, say) would each write a key and a
    certificate, and the renames could interleave into a pair that does not match; one waits
    for the other instead, and then finds nothing to do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), PRIVATE)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ClientError(
                        f"another ca-service request is writing {path.with_suffix('')}.* "
                        f"(it holds {path}); try again later"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@dataclass(frozen=True)
class Layout:
    """Where the files of ``--out PREFIX`` go, for either format."""

    prefix: Path
    p12: bool

    @property
    def key(self) -> Path:
        return self._with(".key")

    @property
    def certificate(self) -> Path:
        return self._with(".crt")

    @property
    def chain(self) -> Path:
        return self._with(".chain.pem")

    @property
    def fullchain(self) -> Path:
        return self._with(".fullchain.pem")

    @property
    def pkcs12(self) -> Path:
        return self._with(".p12")

    @property
    def root(self) -> Path:
        return self._with(".root.pem")

    @property
    def lock(self) -> Path:
        return self._with(".lock")

    def _with(self, suffix: str) -> Path:
        return self.prefix.with_name(self.prefix.name + suffix)

    def outputs(self) -> dict[str, Path]:
        """The files a successful request writes (the root is separate: it is trust)."""
        if self.p12:
            return {"pkcs12": self.pkcs12}
        return {
            "key": self.key,
            "certificate": self.certificate,
            "chain": self.chain,
            "fullchain": self.fullchain,
        }
