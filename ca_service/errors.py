"""One small exception tree for the whole service.

Every error a user can cause is a ``CAError`` with a stable ``code`` and a ``detail`` that is safe
to show to the caller: it never carries key material, stack traces or SQL. The HTTP layer maps the
classes to status codes in one place; the CLI prints ``detail`` on one line.
"""

from __future__ import annotations


class CAError(Exception):
    """Base of every expected, user-facing failure."""

    code = "error"
    title = "Error"
    # Set once the refusal is in the audit log, so that the layers it passes record it once.
    audited = False

    def __init__(self, detail: str, *, rule: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.rule = rule

    def __str__(self) -> str:
        return self.detail


class BadRequest(CAError):
    """The input is malformed or unsupported (bad CSR, bad name, unknown key type)."""

    code = "bad-request"
    title = "Bad request"


class PolicyRejected(CAError):
    """The request is well-formed but a policy rule forbids it; ``rule`` names that rule."""

    code = "policy-rejected"
    title = "Refused by policy"

    def __init__(self, detail: str, *, rule: str) -> None:
        super().__init__(f"{detail} (rule: {rule})", rule=rule)


class NotFound(CAError):
    code = "not-found"
    title = "Not found"


class Conflict(CAError):
    """The request contradicts the current state (revoked with another reason, CA exists)."""

    code = "conflict"
    title = "Conflict"


class Unauthorized(CAError):
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(CAError):
    code = "forbidden"
    title = "Forbidden"


class ConfigError(CAError):
    """Settings or key material prevent the service from starting; raised at start, not later."""

    code = "config"
    title = "Configuration error"


class Unavailable(CAError):
    """A dependency (the database) is away for now; the same request may succeed if retried.

    ``detail`` names the driver's reason for operators (the CLI prints it); the HTTP layer shows
    callers a generic text and a Retry-After instead, since the reason names internal hosts.
    """

    code = "unavailable"
    title = "Service unavailable"
    retry_after = 2  # seconds: a PostgreSQL restart or failover takes about one
    # What HTTP callers read (the detail names internal hosts or devices).
    public_detail = "the database is unavailable for now; retry the request shortly"


class TokenUnavailable(Unavailable):
    """The PKCS#11 token that holds the CA keys failed or went away while the service runs;
    the next request re-opens it, so the same request may succeed if retried."""

    public_detail = "the CA key store (HSM) is unavailable for now; retry the request shortly"
