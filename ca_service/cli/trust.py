"""``ca-service trust install|uninstall|status``: a CA root into a dev machine's trust stores.

Exit codes: 0 done (or nothing to do); 1 a store refused (no permission, a tool failed) or the
state file is unusable; 2 usage; 3 the server cannot be reached or its root does not match the
fingerprint (then nothing is installed). ``--dry-run`` prints the plan and changes nothing.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ca_service.cli.output import handle_errors
from ca_service.errors import BadRequest
from ca_service.trust.fetch import Root, fetch_root, load_root, parse_fingerprint
from ca_service.trust.manifest import Entry, Manifest, default_path
from ca_service.trust.stores import JavaStore, NSSStore, Outcome, SystemStore

_VERBS = {
    "added": "added",
    "present": "already present",
    "would-add": "would add",
    "removed": "removed",
    "would-remove": "would remove",
    "gone": "already gone",
    "changed": "left alone",
    "skipped": "skipped",
    "refused": "REFUSED",
}


def _state_option(func: Any) -> Any:
    return click.option(
        "--state",
        "state",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The record of what was installed (default ~/.config/ca-service/trust.json).",
    )(func)


def _common(func: Any) -> Any:
    func = click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")(func)
    return _state_option(func)


def _update_command(text: str | None) -> list[str] | None:
    if text is None:
        return None
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--update-command") from None
    if not argv:
        raise click.BadParameter("must not be empty", param_hint="--update-command")
    return argv


def _fingerprint(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return parse_fingerprint(text)
    except BadRequest as exc:
        raise click.BadParameter(exc.detail, param_hint="--root-fingerprint") from None


def _report(
    outcomes: list[Outcome],
    *,
    as_json: bool,
    dry_run: bool,
    root: Root | None = None,
    message: str | None = None,
) -> None:
    if as_json:
        doc: dict[str, Any] = {"dry_run": dry_run, "results": [o.as_json() for o in outcomes]}
        if root is not None:
            doc["root"] = {"subject": root.subject, "sha256": root.sha256}
        if message:
            doc["message"] = message
        click.echo(json.dumps(doc, indent=2))
    else:
        if root is not None:
            click.echo(f"root: {root.subject} (sha256 {root.sha256})")
        for o in outcomes:
            detail = f": {o.detail}" if o.detail else ""
            line = f"{o.store}: {_VERBS.get(o.action, o.action)} {o.location}{detail}"
            click.echo(line, err=o.action == "refused")
        if message:
            click.echo(message)
        if dry_run:
            click.echo("dry run: nothing was changed")
    if any(o.action == "refused" for o in outcomes):
        sys.exit(1)


@click.group("trust")
def trust() -> None:
    """Trust this CA's root on a dev machine: system store, browsers (NSS), Java."""


@trust.command("install")
@click.option("--server", help="ca-service URL; its /ca/root.pem is fetched.")
@click.option("--root-fingerprint", help="SHA-256 of the root's DER (colons and case ignored).")
@click.option(
    "--root",
    "root_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The root as a PEM or DER file instead of --server.",
)
@click.option(
    "--system-dir",
    type=click.Path(path_type=Path),
    help="Where the system store's .crt goes (default /usr/local/share/ca-certificates).",
)
@click.option(
    "--update-command",
    help="What rebuilds the system store after a change (default update-ca-certificates).",
)
@click.option("--no-system", is_flag=True, help="Leave the system store alone.")
@click.option(
    "--nss-db",
    "nss_dbs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="An NSS database directory (repeatable; default: this user's Chrome/Firefox ones).",
)
@click.option("--no-nss", is_flag=True, help="Leave the NSS databases alone.")
@click.option(
    "--java-cacerts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A Java keystore instead of the JDK's own cacerts.",
)
@click.option("--no-java", is_flag=True, help="Leave Java's cacerts alone.")
@_common
@handle_errors
def install(
    server: str | None,
    root_fingerprint: str | None,
    root_file: Path | None,
    system_dir: Path | None,
    update_command: str | None,
    no_system: bool,
    nss_dbs: Sequence[Path],
    no_nss: bool,
    java_cacerts: Path | None,
    no_java: bool,
    state: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Add the root to every selected store; what was already there is reported, not repeated."""
    fingerprint = _fingerprint(root_fingerprint)
    command = _update_command(update_command)
    if (server is None) == (root_file is None):
        raise click.UsageError("give --server URL with --root-fingerprint, or --root FILE")
    if server is not None and fingerprint is None:
        raise click.UsageError("--server needs --root-fingerprint: it is what makes the root safe")
    if root_file is not None:
        try:
            root = load_root(root_file, fingerprint)
        except BadRequest as exc:
            raise click.BadParameter(exc.detail, param_hint="--root") from None
    else:
        assert server is not None and fingerprint is not None
        try:
            root = fetch_root(server, fingerprint)
        except BadRequest as exc:
            raise click.BadParameter(exc.detail, param_hint="--server") from None

    manifest = Manifest.load(state or default_path())
    outcomes: list[Outcome] = []
    if not no_system:
        outcomes.append(SystemStore(system_dir, command).install(root, dry_run=dry_run))
    if not no_nss:
        outcomes += NSSStore(list(nss_dbs)).install(root, dry_run=dry_run)
    if not no_java:
        outcomes.append(JavaStore(java_cacerts).install(root, dry_run=dry_run))
    if not dry_run:
        for o in outcomes:
            if o.entry is not None:
                manifest.add(o.entry)
        manifest.save()
    _report(outcomes, as_json=as_json, dry_run=dry_run, root=root)


def _store_for(kind: str, command: list[str] | None) -> SystemStore | NSSStore | JavaStore:
    if kind == "system":
        return SystemStore(update_command=command)
    if kind == "nss":
        return NSSStore()
    return JavaStore()


@trust.command("uninstall")
@click.option("--root-fingerprint", help="Only this root's entries (default: every entry).")
@click.option(
    "--update-command",
    help="What rebuilds the system store (default: the one install ran, with --fresh).",
)
@_common
@handle_errors
def uninstall(
    root_fingerprint: str | None,
    update_command: str | None,
    state: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Remove exactly what install recorded, and only while it still is our root."""
    fingerprint = _fingerprint(root_fingerprint)
    command = _update_command(update_command)
    manifest = Manifest.load(state or default_path())
    entries = [
        e for e in manifest.entries if fingerprint is None or e["sha256"] == fingerprint.hex()
    ]
    if not entries:
        _report([], as_json=as_json, dry_run=dry_run, message="nothing to uninstall")
        return
    outcomes: list[Outcome] = []
    for kind in ("system", "nss", "java"):
        mine = [e for e in entries if e["store"] == kind]
        if mine:
            outcomes += _store_for(kind, command).uninstall(mine, dry_run=dry_run)
    if not dry_run:
        for o in outcomes:
            # Removed, gone or reused by someone else: none of these is ours to remove any more.
            if o.entry is not None and o.action in ("removed", "gone", "changed"):
                manifest.discard(o.entry)
        manifest.save()
    _report(outcomes, as_json=as_json, dry_run=dry_run)


@trust.command("status")
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@handle_errors
def status(state: Path | None, as_json: bool) -> None:
    """What install recorded, and whether each entry is still in its store."""
    manifest = Manifest.load(state or default_path())
    rows: list[tuple[Entry, bool]] = [
        (e, _store_for(e["store"], None).present(e)) for e in manifest.entries
    ]
    if as_json:
        doc = [{**e, "present": present} for e, present in rows]
        click.echo(json.dumps({"state": str(manifest.path), "entries": doc}, indent=2))
        return
    if not rows:
        click.echo(f"nothing installed (according to {manifest.path})")
        return
    for e, present in rows:
        ident = e.get("nickname") or e.get("alias")
        where = f"{e['location']}" + (f" as {ident!r}" if ident else "")
        mark = "present" if present else "MISSING"
        click.echo(f"{e['store']}: {mark} {where} (sha256 {e['sha256'][:16]}..., {e['subject']})")
