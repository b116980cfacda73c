"""Keyset paging of the read-model queries: cursors, statements, time ranges (no I/O)."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.errors import ApiProblem
from api.queries.orders import KEYSET as ORDERS
from api.queries.paging import (
    Keyset,
    Select,
    SortOrder,
    day_range,
    decode_cursor,
    encode_cursor,
    next_cursor,
    time_range,
)
from api.queries.trades import KEYSET as TRADES
from ledger.settings import Settings, SettingsError

times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(placed_at=times, order_id=st.uuids(), order=st.sampled_from(list(SortOrder)))
def test_a_cursor_gives_back_its_key(placed_at: datetime, order_id: UUID, order: SortOrder) -> None:
    cursor = encode_cursor(ORDERS, order, (placed_at, order_id))
    assert decode_cursor(ORDERS, order, cursor) == (placed_at, order_id)
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(
    key=st.tuples(
        times,
        st.uuids(),
        # Text as PostgreSQL stores it: no NUL, no lone surrogate (not encodable as UTF-8).
        st.text(
            st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=64
        ),
    )
)
def test_a_three_part_key_round_trips(key: tuple[datetime, UUID, str]) -> None:
    assert decode_cursor(TRADES, SortOrder.ASC, encode_cursor(TRADES, SortOrder.ASC, key)) == key


@given(text=st.text(max_size=80))
def test_any_text_is_a_cursor_or_an_invalid_cursor(text: str) -> None:
    problem: ApiProblem | None = None
    try:
        decode_cursor(ORDERS, SortOrder.DESC, text)
    except ApiProblem as raised:
        problem = raised
    if problem is not None:
        assert (problem.status_code, problem.code) == (400, "INVALID_CURSOR")


def test_a_cursor_of_another_list_or_order_is_refused() -> None:
    key = (datetime(2025, 3, 3, tzinfo=UTC), uuid4())
    other = Keyset(name="signals", columns=("emitted_at", "signal_id"), key_type=ORDERS.key_type)
    for cursor, order in [
        (encode_cursor(other, SortOrder.DESC, key), SortOrder.DESC),
        (encode_cursor(ORDERS, SortOrder.ASC, key), SortOrder.DESC),
    ]:
        with pytest.raises(ApiProblem) as raised:
            decode_cursor(ORDERS, order, cursor)
        assert raised.value.code == "INVALID_CURSOR"
        assert raised.value.errors == [
            {"field": "cursor", "source": "query", "message": raised.value.detail}
        ]
    assert decode_cursor(ORDERS, SortOrder.DESC, None) is None


def test_a_page_statement_has_only_the_filters_given() -> None:
    select = Select("SELECT * FROM read.orders")
    select.where_given("status = {}", "accepted").where_given("side = {}", None)
    select.where("account_id = {} AND instrument_id = {}", "a", "i")
    after = (datetime(2025, 3, 3, tzinfo=UTC), UUID(int=7))
    sql, arguments = select.page(ORDERS, SortOrder.DESC, after, 10)
    assert sql == (
        "SELECT * FROM read.orders WHERE status = $1 AND account_id = $2 AND instrument_id = $3 "
        "AND (placed_at, order_id) < ($4, $5) ORDER BY placed_at DESC, order_id DESC LIMIT $6"
    )
    assert arguments == ["accepted", "a", "i", *after, 11]


def test_an_ascending_first_page() -> None:
    sql, arguments = Select("SELECT * FROM read.orders").page(ORDERS, SortOrder.ASC, None, 1)
    assert sql == "SELECT * FROM read.orders ORDER BY placed_at, order_id LIMIT $1"
    assert arguments == [2]


def test_the_next_cursor_is_the_last_row_shown_when_more_follow() -> None:
    rows = [
        {"placed_at": datetime(2025, 3, day, tzinfo=UTC), "order_id": UUID(int=day)}
        for day in (5, 4, 3)
    ]
    assert next_cursor(ORDERS, SortOrder.DESC, rows, 3) is None
    assert next_cursor(ORDERS, SortOrder.DESC, rows[:2], 2) is None
    cursor = next_cursor(ORDERS, SortOrder.DESC, rows, 2)
    assert cursor is not None
    assert decode_cursor(ORDERS, SortOrder.DESC, cursor) == (rows[1]["placed_at"], UUID(int=4))


def test_time_ranges() -> None:
    start, end = time_range("2025-03-03T00:00:00Z", "2025-03-04T00:00:00+01:00")
    assert start == datetime(2025, 3, 3, tzinfo=UTC)
    assert end == datetime(2025, 3, 3, 23, tzinfo=UTC)
    assert time_range(None, None) == (None, None)
    assert day_range("2025-03-03", None) == (date(2025, 3, 3), None)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        ("2025-03-03T00:00:00", None, "from"),  # no UTC offset
        (None, "2025-03-03", "to"),  # a day is not a time
        ("yesterday", None, "from"),
        ("2025-03-03T00:00:00 00:00", None, "from"),  # a "+" sent unencoded
        ("2" * 65, None, "from"),
        ("2025-03-04T00:00:00Z", "2025-03-04T00:00:00Z", "to"),
        ("2025-03-05T00:00:00Z", "2025-03-04T00:00:00Z", "to"),
    ],
)
def test_bad_time_ranges_name_their_field(start: str | None, end: str | None, field: str) -> None:
    with pytest.raises(ApiProblem) as raised:
        time_range(start, end)
    assert (raised.value.status_code, raised.value.code) == (400, "VALIDATION_ERROR")
    assert raised.value.errors is not None
    assert raised.value.errors[0]["field"] == field


def test_bad_day_ranges_name_their_field() -> None:
    for start, end, field in [("2025-02-30", None, "from"), ("2025-03-04", "2025-03-03", "to")]:
        with pytest.raises(ApiProblem) as raised:
            day_range(start, end)
        assert raised.value.errors is not None
        assert raised.value.errors[0]["field"] == field


def test_the_consistency_wait_setting() -> None:
    assert Settings.from_env({}).consistency_wait_s == 2.0
    assert Settings.from_env({"LEDGER_CONSISTENCY_WAIT_S": "0.25"}).consistency_wait_s == 0.25
    for bad in ("0", "-1", "31", "nan", "soon"):
        with pytest.raises(SettingsError, match="LEDGER_CONSISTENCY_WAIT_S"):
            Settings.from_env({"LEDGER_CONSISTENCY_WAIT_S": bad})


@pytest.mark.parametrize(
    "raw",
    [
        b'["orders", "desc", ["2025-03-03T00:00:00", "00000000-0000-4000-8000-000000000001"]]',
        b'["trades", "desc", ["2025-03-03T00:00:00Z", "00000000-0000-4000-8000-000000000001", '
        b'"a\\u0000b"]]',
    ],
)
def test_a_key_postgresql_could_not_compare_is_an_invalid_cursor(raw: bytes) -> None:
    keyset = ORDERS if raw.startswith(b'["orders"') else TRADES
    cursor = base64.urlsafe_b64encode(raw).decode()
    with pytest.raises(ApiProblem) as raised:
        decode_cursor(keyset, SortOrder.DESC, cursor)
    assert raised.value.code == "INVALID_CURSOR"
