"""Install a ca-service root into a dev machine's trust stores, and take it out again.

``fetch`` gets the root and checks its fingerprint, ``stores`` holds one class per store
(system, NSS, Java), ``manifest`` records what was added so that uninstall removes exactly that.
The command line is ``ca_service/cli/trust.py``; docs/trust.md describes every store.
"""

from __future__ import annotations
