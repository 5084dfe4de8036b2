"""OIDC: a CI pipeline's ID token as the credential for issuing certificates.

``provisioners`` validates and stores which issuers' tokens are trusted and for which names,
``jwks`` keeps each issuer's signing keys, ``verify`` checks a token (PyJWT does the JOSE),
``claims`` and ``names`` turn its claims into a caller policy for the core. No Flask here: the
web layer hands the bearer credential over and gets a principal back.
"""
