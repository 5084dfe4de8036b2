"""Old import path of the core, kept while branches merge: use ca_service.core.facade.Core."""

from ca_service.core.facade import Core as CertificateAuthority
from ca_service.core.hierarchy import HierarchySpec
from ca_service.core.readiness import Readiness

__all__ = ["CertificateAuthority", "HierarchySpec", "Readiness"]
