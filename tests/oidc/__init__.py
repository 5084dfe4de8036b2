"""OIDC provisioners and ID tokens: a loopback issuer (issuer.py), unit and live tests."""
