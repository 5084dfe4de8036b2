"""ca-service: a self-hosted certificate authority."""

__version__ = "0.1.0"
