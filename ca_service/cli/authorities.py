"""Commands on the authorities themselves: init (create or adopt a hierarchy), authorities,
set-default and authority revoke."""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography import x509

from ca_service import api_models
from ca_service.cli.context import _actor, _authority, _settings
from ca_service.cli.output import _print_authorities, handle_errors
from ca_service.core.hierarchy import HierarchySpec
from ca_service.domain import KeyType, RevocationReason
from ca_service.errors import BadRequest, ConfigError
from ca_service.policy.names import NameConstraintsSpec

KEY_TYPES = [k.value for k in KeyType]
REASONS = [r.value for r in RevocationReason]


# ---------------------------------------------------------------------------- init


@click.command()
@click.option("--name", default="default", show_default=True, help="Name of the issuing CA.")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="ecdsa-p256", show_default=True)
@click.option(
    "--root-subject", help="Root subject as an RFC 4514 string, e.g. 'CN=Acme Root,O=Acme'."
)
@click.option("--subject", "inter_subject", help="Issuing CA subject (RFC 4514).")
@click.option("--root-days", type=click.IntRange(1, 36500), default=3650, show_default=True)
@click.option("--intermediate-days", type=click.IntRange(1, 36500), default=1825, show_default=True)
@click.option(
    "--permit",
    multiple=True,
    help="Name constraint to permit (example.test, 10.0.0.0/8, @example.test). Repeatable.",
)
@click.option("--exclude", multiple=True, help="Name constraint to exclude. Repeatable.")
@click.option(
    "--import-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Adopt this CA certificate instead of creating one.",
)
@click.option(
    "--import-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key of --import-cert (PEM or DER).",
)
@click.option(
    "--import-key-passphrase-file", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--import-chain",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM issuers above an imported intermediate.",
)
@click.option("--exist-ok", is_flag=True, help="Succeed without change when the authority exists.")
@click.option(
    "--key-backend",
    type=click.Choice(["database", "file", "pkcs11"]),
    help="Where the CA keys are made (default: the key_backend setting). database: encrypted "
    "in the database, for every replica; file: encrypted in data_dir/keys, one node only; "
    "pkcs11: inside the token of pkcs11_module / pkcs11_token_label; the PIN comes from "
    "CA_PKCS11_PIN(_FILE) or pkcs11_pin_file, never from an option.",
)
@click.option("--root-key-label", help="pkcs11: adopt the root key with this CKA_LABEL.")
@click.option("--root-key-id", help="pkcs11: adopt the root key with this CKA_ID (hex).")
@click.option(
    "--key-label",
    help="pkcs11: adopt the issuing CA key with this CKA_LABEL (with --import-cert: the key of "
    "the imported CA certificate).",
)
@click.option("--key-id", help="pkcs11: as --key-label, by CKA_ID (hex).")
@handle_errors
def init(
    name: str,
    key_type: str,
    root_subject: str | None,
    inter_subject: str | None,
    root_days: int,
    intermediate_days: int,
    permit: tuple[str, ...],
    exclude: tuple[str, ...],
    import_cert: Path | None,
    import_key: Path | None,
    import_key_passphrase_file: Path | None,
    import_chain: Path | None,
    exist_ok: bool,
    key_backend: str | None,
    root_key_label: str | None,
    root_key_id: str | None,
    key_label: str | None,
    key_id: str | None,
) -> None:
    """Create (or adopt) a root CA and an issuing intermediate, and the database."""
    if key_backend is not None:
        root = click.get_current_context().find_root()
        root.obj = _settings().with_overrides(key_backend=key_backend)
    root_key = _token_key(root_key_label, root_key_id)
    inter_key = _token_key(key_label, key_id)
    if (root_key or inter_key) and _settings().key_backend != "pkcs11":
        raise BadRequest("--root-key-* and --key-* adopt token keys: use --key-backend pkcs11")
    ca = _authority(migrate_first=True)
    # Open every existing key first: a wrong passphrase must stop init before it writes new keys
    # under that passphrase next to the old ones.
    existing = set(ca.load_keys())
    if name in existing:
        if exist_ok:
            click.echo(f"authority {name!r} exists already; nothing changed")
            _print_authorities(
                [a for a in ca.list_authorities() if a.name in (name, f"{name}-root")]
            )
            return
        raise ConfigError(
            f"authority {name!r} exists already; nothing was changed (see --exist-ok)"
        )
    if import_cert and inter_key:
        # The CA's key is in the token already (--key-label/--key-id name it).
        if import_key or root_key:
            raise BadRequest("--import-cert with a token key takes --key-label/--key-id only")
        records = ca.import_authority(
            name,
            import_cert.read_bytes(),
            b"",
            None,
            import_chain.read_bytes() if import_chain else None,
            _actor(),
            intermediate_days=intermediate_days,
            key_reference=inter_key,
        )
    elif import_cert or import_key:
        if not (import_cert and import_key):
            raise BadRequest("--import-cert and --import-key go together")
        passphrase = (
            import_key_passphrase_file.read_bytes().strip() if import_key_passphrase_file else None
        )
        records = ca.import_authority(
            name,
            import_cert.read_bytes(),
            import_key.read_bytes(),
            passphrase,
            import_chain.read_bytes() if import_chain else None,
            _actor(),
            intermediate_days=intermediate_days,
        )
    else:
        spec = HierarchySpec(
            name=name,
            key_type=KeyType(key_type),
            root_subject=_parse_subject(root_subject),
            intermediate_subject=_parse_subject(inter_subject),
            root_days=root_days,
            intermediate_days=intermediate_days,
            constraints=NameConstraintsSpec.parse(permit, exclude),
            root_key=root_key,
            intermediate_key=inter_key,
        )
        # Only after the options are checked, so that a bad option is the one line printed.
        click.echo(f"creating root and issuing CA {name!r} ({key_type}) ...", err=True)
        records = ca.create_hierarchy(spec, _actor())
    ca.load_keys()
    for record in records:
        if not record.is_root:
            ca.generate_crl(record.name)
    _print_authorities(records)


def _token_key(label: str | None, key_id: str | None) -> str | None:
    """The pkcs11: URI of a token key named by label and/or id, or None for a new key."""
    if not label and not key_id:
        return None
    from ca_service.signing.pkcs11 import KeyRef

    return str(KeyRef.of(label, key_id))


def _parse_subject(text: str | None) -> x509.Name | None:
    if not text:
        return None
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        raise BadRequest(f"subject {text!r} is not an RFC 4514 name: {exc}") from None
    if not name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        raise BadRequest("a CA subject needs a CN")
    return name


# ---------------------------------------------------------------------------- export / authorities


@click.command()
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def authorities(as_json: bool) -> None:
    """List the authorities this service holds."""
    ca = _authority()
    records = ca.list_authorities()
    now = ca.clock.now()
    if as_json:
        # The API's Authority record, from the same model as GET /api/v1/authorities.
        listed = [api_models.as_json(api_models.authority(r, now)) for r in records]
        click.echo(json.dumps(listed, indent=2))
        return
    if not records:
        click.echo("no authorities yet; run 'ca-service init'")
    _print_authorities(records)


@click.group("authority")
def authority_group() -> None:
    """Actions on one authority (the list is 'ca-service authorities')."""


@authority_group.command("revoke")
@click.argument("name")
@click.option(
    "--reason",
    type=click.Choice([r for r in REASONS if r != "certificateHold"], case_sensitive=False),
    required=True,
    help="RFC 5280 reason; cACompromise when its key is lost or exposed.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def authority_revoke(name: str, reason: str, yes: bool) -> None:
    """Revoke the issuing CA NAME for good: it enters its root's CRL and OCSP answers, it issues
    nothing more, and every certificate it issued stops validating."""
    ca = _authority()
    ca.load_keys()
    if not yes:
        click.confirm(
            f"Revoke authority {name!r} ({reason})? It issues nothing more and every certificate "
            "it issued stops validating. This cannot be undone",
            abort=True,
        )
    r = ca.revoke_authority(name, RevocationReason.parse(reason), _actor())
    click.echo(
        f"authority {r.name}: revoked ({r.revocation_reason}) at "
        f"{r.revoked_at:%Y-%m-%d %H:%M:%S} UTC; listed in the CRL of {r.parent}"
    )


@click.command("set-default")
@click.argument("name")
@handle_errors
def set_default(name: str) -> None:
    """Make NAME the default issuing authority."""
    _authority().set_default(name, _actor())
    click.echo(f"{name} is now the default authority")
