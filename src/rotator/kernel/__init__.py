"""The kernel below the service: tenants, data keys, seal/open, integrity, the audit append."""

from rotator.kernel.core import Kernel, utcnow

__all__ = ["Kernel", "utcnow"]
