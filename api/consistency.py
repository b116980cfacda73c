"""The consistency token: a command's last event's (tx, position), opaque to clients.

Encoded as URL-safe base64 of "tx.position" so clients treat it as a string; a query's
`consistent_with=` decodes it back. A token that does not decode is a client error.
"""

from __future__ import annotations

import base64
import binascii

from ledger.domain.errors import ValidationError
from ledger.store import Checkpoint

TOKEN_LENGTH_MAX = 64


class InvalidConsistencyTokenError(ValidationError):
    """Raised when a consistency token given by a client does not decode."""

    code = "INVALID_CONSISTENCY_TOKEN"


def encode_token(checkpoint: Checkpoint) -> str:
    raw = f"{checkpoint.tx}.{checkpoint.position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Checkpoint:
    if len(token) > TOKEN_LENGTH_MAX:
        raise InvalidConsistencyTokenError("consistency token too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        tx, position = raw.split(".")
        checkpoint = Checkpoint(int(tx), int(position))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidConsistencyTokenError("consistency token does not decode") from None
    if checkpoint.tx < 0 or checkpoint.position < 0:
        raise InvalidConsistencyTokenError("consistency token does not decode")
    return checkpoint
