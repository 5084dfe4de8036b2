"""The admin pages: API tokens, authorities, the audit log, ACME EAB keys, OIDC provisioners."""

from __future__ import annotations

from werkzeug.wrappers import Response

from ca_service.domain import Role
from ca_service.ui.blueprint import render, ui
from ca_service.ui.session import signed_in


@ui.get("/ui/authorities")
@signed_in()
def authorities() -> Response:
    return render("placeholder.html", title="Authorities", nav="ui.authorities")


@ui.get("/ui/tokens")
@signed_in(Role.ADMIN)
def tokens() -> Response:
    return render("placeholder.html", title="API tokens", nav="ui.tokens")


@ui.get("/ui/audit")
@signed_in(Role.ADMIN)
def audit() -> Response:
    return render("placeholder.html", title="Audit log", nav="ui.audit")


@ui.get("/ui/acme/eab")
@signed_in(Role.ADMIN)
def eab_keys() -> Response:
    return render("placeholder.html", title="ACME EAB keys", nav="ui.eab_keys")


@ui.get("/ui/provisioners")
@signed_in(Role.ADMIN)
def provisioners() -> Response:
    return render("placeholder.html", title="OIDC provisioners", nav="ui.provisioners")
