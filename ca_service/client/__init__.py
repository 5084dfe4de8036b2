"""The remote client behind ``ca-service request``: everything a pipeline or a developer's
machine needs to get a certificate from a ca-service over HTTPS, and nothing of the server.

No Flask, no store, no CA key: only the standard library's HTTPS client, ``cryptography`` and
the pure helpers of ``ca_service.crypto``. The modules, by concern:

- ``errors``: the three ways a request can fail, each with its exit code;
- ``transport``: HTTPS with bounded timeouts and bounded retries, verified against one root;
- ``bootstrap``: trust on first use made safe by a fingerprint (``step ca bootstrap``);
- ``credentials``: an API token, or an OIDC ID token from a file, GitHub Actions or GitLab;
- ``files``: atomic writes, the private key never readable by others, PEM or PKCS#12;
- ``flow``: the whole request, from "is there anything to do?" to the files on disk.
"""
