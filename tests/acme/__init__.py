"""Tests of the ACME server: challenge validation, CAA and the loopback DNS server."""
