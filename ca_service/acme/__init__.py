"""ACME server (RFC 8555): protocol front end, challenge validation and CAA."""
