"""The shape of the core (issue 10): parts with one job behind one facade, every CA key behind
a Signer inside signing/, and stored rows reached only through repositories."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest
from cryptography import x509

import ca_service
from ca_service.core.facade import Core
from ca_service.crypto import ocsp_wire
from ca_service.domain import RevocationReason

PACKAGE = Path(ca_service.__file__).parent
CORE_PARTS = sorted((PACKAGE / "core").glob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module and ``module.name`` the file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", CORE_PARTS, ids=lambda p: p.name)
def test_each_part_of_the_core_is_small_and_says_what_it_owns(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= 300
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring
    if path.name != "__init__.py":
        assert "never" in docstring, "a part says what it must never do"


def test_ca_keys_are_loaded_made_and_used_only_inside_signing() -> None:
    """Nothing outside signing/ reads or writes a key file, or signs with a key object."""
    key_handling = {
        "ca_service.crypto.keys.load_encrypted_private_key",
        "ca_service.crypto.keys.load_any_private_key",
        "ca_service.crypto.keys.encrypt_private_key",
        "ca_service.signing.algorithms",
        "ca_service.signing.issuer.sign_leaf",
        "ca_service.signing.issuer.sign_intermediate",
        "ca_service.signing.issuer.sign_root",
    }
    outside = [
        p
        for p in PACKAGE.rglob("*.py")
        if p.parent.name not in ("signing", "crypto") and "migrations" not in p.parts
    ]
    assert outside
    for path in outside:
        assert not _imports(path) & key_handling, path


def test_the_core_hands_its_callers_no_key_signer_or_signing_callback() -> None:
    """What front ends get back: records, certificates, PEM and DER (``material()`` returned
    the CA key with the certificate; ``ocsp_signer()`` a closure over a responder key)."""
    assert not hasattr(Core, "material") and not hasattr(Core, "ocsp_signer")
    methods = [
        (name, member)
        for name, member in inspect.getmembers(Core, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert len(methods) > 20
    for name, member in methods:
        returned = str(typing.get_type_hints(member).get("return"))
        for word in ("Signer", "PrivateKey", "Material", "Keystore", "Callable"):
            assert word not in returned, f"Core.{name} returns {returned}"


def test_the_ocsp_encoder_takes_bytes_to_sign_and_a_signature_not_a_signer() -> None:
    for name, function in inspect.getmembers(ocsp_wire, inspect.isfunction):
        if function.__module__ == ocsp_wire.__name__:
            hints = typing.get_type_hints(function)
            assert all("Callable" not in str(h) for h in hints.values()), name


@pytest.mark.parametrize("path", CORE_PARTS, ids=lambda p: p.name)
def test_the_core_reaches_stored_rows_only_through_repositories(path: Path) -> None:
    imported = _imports(path)
    assert not any(m.startswith("ca_service.storage.models") for m in imported)
    assert {m for m in imported if m.startswith("sqlalchemy")} <= {
        "sqlalchemy.exc",
        "sqlalchemy.exc.IntegrityError",
    }


@pytest.mark.parametrize("reason", list(RevocationReason))
def test_the_one_table_of_reason_codes_is_rfc_5280s(reason: RevocationReason) -> None:
    """The code the CRL and OCSP encoders write is the one `cryptography` encodes for it."""
    assert x509.CRLReason(reason.flag).public_bytes() == bytes((0x0A, 1, reason.code))
