"""The ACME front end (RFC 8555): protocol state, JWS, validation; finalize calls the core."""
