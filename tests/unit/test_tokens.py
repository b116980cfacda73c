"""Access tokens: what the issuer remembers of the tokens it verified, and what it never does."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from api import tokens
from api.errors import ApiProblem
from api.tokens import ACCESS_TTL, LEEWAY_S, TokenIssuer
from ledger.domain.user import Role

SECRET = "s" * 48


class CountingDecode:
    """jwt.decode, counting its calls: each is a full verification."""

    def __init__(self) -> None:
        self.calls = 0
        self._decode = jwt.decode

    def __call__(self, *arguments: Any, **options: Any) -> Any:
        self.calls += 1
        return self._decode(*arguments, **options)


@pytest.fixture
def decode(monkeypatch: pytest.MonkeyPatch) -> CountingDecode:
    counting = CountingDecode()
    monkeypatch.setattr(tokens.jwt, "decode", counting)
    return counting


def issued(issuer: TokenIssuer, *, ago: timedelta = timedelta(0)) -> str:
    return issuer.issue(uuid.uuid4(), Role.TRADER, 1, now=datetime.now(UTC) - ago)


def code_of(issuer: TokenIssuer, token: str) -> str:
    with pytest.raises(ApiProblem) as refused:
        issuer.verify(token)
    return refused.value.code


def test_a_token_verified_once_is_not_verified_whole_again(decode: CountingDecode) -> None:
    issuer = TokenIssuer(SECRET)
    token = issued(issuer)
    first = issuer.verify(token)
    assert issuer.verify(token) == first
    assert decode.calls == 1


def test_a_remembered_token_still_expires(decode: CountingDecode) -> None:
    now = [time.time()]
    issuer = TokenIssuer(SECRET, clock=lambda: now[0])
    token = issued(issuer)
    claims = issuer.verify(token)
    now[0] = claims.exp + LEEWAY_S - 0.5
    assert issuer.verify(token) == claims
    now[0] = claims.exp + LEEWAY_S
    assert code_of(issuer, token) == "TOKEN_EXPIRED"
    assert decode.calls == 1


def test_an_expired_token_is_refused_and_not_remembered(decode: CountingDecode) -> None:
    issuer = TokenIssuer(SECRET)
    token = issued(issuer, ago=ACCESS_TTL + timedelta(seconds=LEEWAY_S + 1))
    assert code_of(issuer, token) == "TOKEN_EXPIRED"
    assert code_of(issuer, token) == "TOKEN_EXPIRED"
    assert decode.calls == 2


def test_a_token_altered_after_its_original_was_verified_is_refused() -> None:
    issuer = TokenIssuer(SECRET)
    token = issued(issuer)
    issuer.verify(token)
    header, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"trader"', b'"admin"')
    ).decode()
    assert code_of(issuer, f"{header}.{forged_payload}.{signature}") == "TOKEN_INVALID"
    assert code_of(issuer, f"{header}.{payload}.{signature[:-2]}AA") == "TOKEN_INVALID"
    assert code_of(issuer, token + " ") == "TOKEN_INVALID"


def test_a_token_of_another_key_is_refused_though_the_same_claims_were_verified() -> None:
    issuer, other = TokenIssuer(SECRET), TokenIssuer("o" * 48)
    token = issued(other)
    other.verify(token)
    assert code_of(issuer, token) == "TOKEN_INVALID"


def test_the_tokens_remembered_are_bounded_oldest_forgotten_first(
    decode: CountingDecode,
) -> None:
    issuer = TokenIssuer(SECRET, verified_max=2)
    first, second, third = issued(issuer), issued(issuer), issued(issuer)
    for token in (first, second, third, third, second):
        issuer.verify(token)
    assert decode.calls == 3
    issuer.verify(first)
    assert decode.calls == 4
