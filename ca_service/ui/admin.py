"""The admin pages: API tokens (list, create with the secret shown once, revoke), the
authorities with their chains and downloads, the audit log with filters, ACME EAB keys and OIDC
provisioners. Each reuses the service the API uses (TokenService, EABKeys, ProvisionerService,
the catalog) and the same policy functions, so a token made here is judged as one made there.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import request, url_for
from werkzeug.wrappers import Response

from ca_service.domain import Role
from ca_service.errors import BadRequest
from ca_service.policy import authorization
from ca_service.ui.blueprint import given, render, ui
from ca_service.ui.session import actor, signed_in
from ca_service.web.extensions import core, eab_keys, provisioners, tokens

TOKEN_FIELDS = ("name", "role", "allowed_names", "allowed_subjects", "max_validity_days",
                "expires_in_days")  # fmt: skip
# Which form field a refused grant is about (policy/authorization's rules), for its message.
_FIELD_OF_RULE = {"token.unknown_profile": "profiles", "token.unknown_authority": "authorities"}
AUDIT_FILTERS = ("actor", "action", "target", "since", "until")
AUDIT_PAGE = 50


@ui.get("/ui/authorities")
@signed_in()
def authorities() -> Response:
    ca = core()
    now = ca.clock.now()
    items = [(a, ca.chain_pem(a.name)) for a in ca.list_authorities()]
    return render(
        "authorities.html", title="Authorities", nav="ui.authorities", items=items, now=now
    )


def _token_page(status: int = 200, **context: Any) -> Response:
    ca = core()
    context.setdefault("values", {})
    context.setdefault("errors", {})
    return render(
        "tokens.html",
        status,
        title="API tokens",
        nav="ui.tokens_page",
        tokens=tokens().list(),
        now=ca.clock.now(),
        roles=[r.value for r in Role],
        profiles=sorted(ca.settings.profiles),
        authorities=sorted(a.name for a in ca.list_authorities()),
        **context,
    )


@ui.get("/ui/tokens")
@signed_in(Role.ADMIN)
def tokens_page() -> Response:
    revoked = request.args.get("revoked")
    return _token_page(notice=f"Token {revoked} is revoked." if revoked else None)


def _lines(text: str) -> list[str] | None:
    """A textarea of patterns, one a line (commas also separate)."""
    items = [p.strip() for line in text.splitlines() for p in line.split(",") if p.strip()]
    return items or None


def _days(values: dict[str, str], name: str, errors: dict[str, str]) -> int | None:
    text = values.get(name, "")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 3650:
        errors[name] = "Enter a whole number of days from 1 to 3650."
        return None
    return int(text)


@ui.post("/ui/tokens")
@signed_in(Role.ADMIN)
def create_token() -> Response:
    """Make a token as POST /api/v1/tokens does; its secret is on this one answer only."""
    form = request.form
    values = {k: form.get(k, "").strip() for k in TOKEN_FIELDS}
    chosen_profiles = form.getlist("profiles")
    chosen_authorities = form.getlist("authorities")
    errors: dict[str, str] = {}
    if not values["name"] or len(values["name"]) > 128:
        errors["name"] = "Enter a name of 1 to 128 characters."
    role = None
    try:
        role = Role.parse(values["role"])
    except BadRequest:
        errors["role"] = "Choose a role."
    max_days = _days(values, "max_validity_days", errors)
    expires_days = _days(values, "expires_in_days", errors)
    ca = core()
    if role is not None and not errors:
        try:
            policy = authorization.build_policy(
                role,
                names=_lines(values["allowed_names"]),
                profiles=chosen_profiles or None,
                max_validity_days=max_days,
                authorities=chosen_authorities or None,
                allow_wildcards=form.get("allow_wildcards") == "yes",
                subjects=_lines(values["allowed_subjects"]),
            )
            authorization.check_token_targets(
                policy, ca.settings.profiles, {a.name for a in ca.list_authorities()}
            )
        except BadRequest as exc:
            # Said at the field it is about: an unknown profile or authority, else the names.
            errors[_FIELD_OF_RULE.get(exc.rule or "", "allowed_names")] = exc.detail
    if errors or role is None:
        return _token_page(
            400,
            values=values,
            errors=errors,
            chosen_profiles=chosen_profiles,
            chosen_authorities=chosen_authorities,
            allow_wildcards=form.get("allow_wildcards") == "yes",
        )
    expires_at = ca.clock.now() + dt.timedelta(days=expires_days) if expires_days else None
    secret, record = tokens().create(values["name"], role, policy, actor(), expires_at=expires_at)
    # Rendered, not redirected: the secret exists only in this answer (Cache-Control:
    # no-store), and no URL or later page can show it again.
    return render(
        "token_created.html",
        title="Token created",
        nav="ui.tokens_page",
        record=record,
        secret=secret,
    )


@ui.post("/ui/tokens/<token_id>/revoke")
@signed_in(Role.ADMIN)
def revoke_token(token_id: str) -> Response:
    record = tokens().revoke(token_id, actor())
    return Response(status=303, headers={"Location": url_for("ui.tokens_page", revoked=record.id)})


def _time(values: dict[str, str], name: str, errors: dict[str, str]) -> dt.datetime | None:
    """A date (YYYY-MM-DD) or a date and time (as a datetime-local field sends it), in UTC."""
    text = values.get(name, "")
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        errors[name] = "Enter a date (YYYY-MM-DD) or a date and time (YYYY-MM-DDTHH:MM), UTC."
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@ui.get("/ui/audit")
@signed_in(Role.ADMIN)
def audit() -> Response:
    values = {k: request.args.get(k, "").strip() for k in AUDIT_FILTERS}
    errors: dict[str, str] = {}
    for name in ("actor", "action", "target"):
        if len(values[name]) > 255:
            errors[name] = "At most 255 characters."
    since = _time(values, "since", errors)
    until = _time(values, "until", errors)
    cursor = request.args.get("cursor") or None
    events: list[Any] = []
    next_url = None
    if not errors:
        try:
            events, next_cursor = core().catalog.audit_page(
                actor=values["actor"] or None,
                action=values["action"] or None,
                target=values["target"] or None,
                since=since,
                until=until,
                cursor=cursor,
                limit=AUDIT_PAGE,
            )
        except BadRequest as exc:
            errors["cursor"] = exc.detail
        else:
            if next_cursor:
                next_url = url_for("ui.audit", **given(values), cursor=next_cursor)
    first_url = url_for("ui.audit", **given(values)) if cursor else None
    return render(
        "audit.html",
        400 if errors else 200,
        title="Audit log",
        nav="ui.audit",
        values=values,
        errors=errors,
        events=events,
        next_url=next_url,
        first_url=first_url,
    )


@ui.get("/ui/acme/eab")
@signed_in(Role.ADMIN)
def eab_keys_page() -> Response:
    return render("eab.html", title="ACME EAB keys", nav="ui.eab_keys_page", keys=eab_keys().list())


@ui.get("/ui/provisioners")
@signed_in(Role.ADMIN)
def provisioners_page() -> Response:
    return render(
        "provisioners.html",
        title="OIDC provisioners",
        nav="ui.provisioners_page",
        provisioners=provisioners().list(),
    )
