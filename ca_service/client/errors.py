"""How a client request can fail, and the exit code each failure maps to.

The classes carry a one-line, user-safe message: never a token, a key or a traceback.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base of every expected failure of the client; ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Refused(ClientError):
    """The server answered and said no (a 4xx problem: bad request, policy, credentials)."""

    exit_code = 1

    def __init__(self, message: str, *, status: int = 0, rule: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.rule = rule


class UsageError(ClientError):
    """The invocation cannot work as given (no credential, no trust, a bad value)."""

    exit_code = 2


class Unreachable(ClientError):
    """The server could not be reached or could not be verified: connection, TLS, a root
    whose fingerprint does not match, an answer that does not chain to the root, 5xx."""

    exit_code = 3
