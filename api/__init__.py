"""The HTTP API of the ledger (Litestar)."""

from api.app import create_app

__all__ = ["create_app"]
