"""The slow path for bodies DuckDB refuses keeps what the server sent: numbers Python
cannot hold (1e400, integers past its 4,300-digit limit) reach `extra` and the
quarantine as the server wrote them, just as on the fast path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rcs_sync.model.commits import Commit, LoadResult
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.model.windows import Window
from rcs_sync.warehouse.bodies import sanitize_body
from rcs_sync.warehouse.duckdb_file import Warehouse

T0 = datetime(2026, 3, 1, tzinfo=UTC)
WINDOW = Window(T0, datetime(2026, 3, 2, tzinfo=UTC))

BIG = "1e400"
NEGATIVE = "-1e400"
HUGE = str(10**400)
LONG = "9" * 5_000
"""Beyond the digits Python converts to an int (`sys.get_int_max_str_digits()`)."""


def record(rid: object = 1, **literals: str) -> str:
    """One record as JSON text; `literals` are JSON values written exactly as given."""
    fields = {
        "campaign": "7",
        "id": str(rid),
        "job": "70",
        "number": '"+33612345678"',
        "reference": f'"ref-{str(rid)[:10]}"',
        "state": "1",
        "team": "2",
        "timestamp": '"2026-03-01T10:21:14.243Z"',
        **literals,
    }
    return "{" + ", ".join(f'"{name}": {value}' for name, value in fields.items()) + "}"


LONE_SURROGATE = record(99, number='"\\ud800"')
"""DuckDB refuses a body holding this record: it sends the body down the slow path."""
SLOW_PATH_REASON = "record: text is not valid Unicode (non-UTF-8 bytes or lone surrogate)"


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    wh = Warehouse(tmp_path / "rcs.duckdb", lock_timeout=5)
    wh.migrate()
    return wh


def load(wh: Warehouse, tmp_path: Path, records: list[str]) -> LoadResult:
    path = tmp_path / "body.json"
    path.write_text("[" + ", ".join(records) + "]", encoding="utf-8")
    run_id = wh.start_run(RCS_RECORDS, "all", "test", "backfill")
    commit = Commit(RCS_RECORDS, "all", run_id, T0, window=WINDOW)
    return wh.commit_batch(Spool.of(path), commit, include_optional=False, server_limit=None)


def strict(text: str) -> Any:
    """Parse JSON keeping every number's text, refusing NaN/Infinity (not JSON)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_int=str, parse_float=str, parse_constant=refuse)


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_numbers_in_undocumented_fields_are_stored_as_the_server_wrote_them(
    warehouse: Warehouse, tmp_path: Path, path: str
) -> None:
    good = record(1, big=BIG, negative=NEGATIVE, huge=HUGE)
    result = load(warehouse, tmp_path, [good, LONE_SURROGATE] if path == "slow" else [good])
    assert (result.inserted, result.quarantined) == (1, 1 if path == "slow" else 0)
    if path == "slow":
        assert warehouse.query("SELECT reason FROM rcs_quarantine") == [(SLOW_PATH_REASON,)]
    [(extra,)] = warehouse.query("SELECT extra FROM rcs_records WHERE id = 1")
    assert strict(extra) == {"big": BIG, "negative": NEGATIVE, "huge": HUGE}


@pytest.mark.parametrize("path", ["fast", "slow"])
def test_an_integer_too_long_for_python_loads_like_any_other_value(
    warehouse: Warehouse, tmp_path: Path, path: str
) -> None:
    """Reading the body's head for undocumented fields, or the body on the slow path,
    must not convert it (ValueError): kept in `extra`, quarantined as an id."""
    records = [record(1, long=LONG), record(LONG)]
    result = load(warehouse, tmp_path, [*records, LONE_SURROGATE] if path == "slow" else records)
    assert (result.inserted, result.quarantined) == (1, 2 if path == "slow" else 1)
    [(extra,)] = warehouse.query("SELECT extra FROM rcs_records WHERE id = 1")
    assert strict(extra) == {"long": LONG}
    [(reason, raw)] = warehouse.query(
        "SELECT reason, raw FROM rcs_quarantine WHERE record_id = ?", [LONG]
    )
    assert reason.startswith("id: ")
    assert strict(raw)["id"] == LONG


def test_documented_fields_holding_such_numbers_are_quarantined_with_a_reason(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Each bad record is quarantined for the field holding the number, and its raw JSON
    keeps the number's text (the record with a lone surrogate forces the slow path)."""
    expected = {  # record id: (field, literal)
        "1": ("state", BIG),
        "2": ("team", NEGATIVE),
        "3": ("campaign", HUGE),
        "4": ("timestamp", BIG),
        HUGE: ("id", HUGE),
    }
    records = [
        record(rid, **({} if field == "id" else {field: literal}))
        for rid, (field, literal) in expected.items()
    ]
    result = load(warehouse, tmp_path, [*records, record(7), LONE_SURROGATE])
    assert (result.received, result.inserted, result.quarantined) == (7, 1, 6)
    assert warehouse.query("SELECT id FROM rcs_records") == [(7,)]
    got = {
        rid: (reason, strict(raw))
        for rid, reason, raw in warehouse.query(
            "SELECT record_id, reason, raw FROM rcs_quarantine WHERE reason <> ?",
            [SLOW_PATH_REASON],
        )
    }
    assert got.keys() == expected.keys()
    for rid, (field, literal) in expected.items():
        reason, raw = got[rid]
        assert reason.startswith(f"{field}: "), (rid, reason)
        assert raw[field] == literal, (rid, field)


def test_each_element_is_written_as_the_server_wrote_it(tmp_path: Path) -> None:
    """A pretty-printed body: the loadable element becomes one line, its text otherwise
    untouched (an escaped newline inside a string stays); the rejected one is kept raw."""
    good = '{\n  "id": 1,\n  "x": 1e400,\n  "y": 1.50,\n  "z": "a\\nb"\r\n}'
    body = tmp_path / "body.json"
    body.write_text("[\n  " + good + ",\n  " + LONE_SURROGATE + "\n]\n", encoding="utf-8")
    clean, rejected = sanitize_body(body, "id")
    assert clean.read_text(encoding="utf-8") == good.replace("\r", " ").replace("\n", " ") + "\n"
    assert [(r.record_id, r.reason, r.raw) for r in rejected] == [
        ("99", SLOW_PATH_REASON, LONE_SURROGATE)
    ]


def test_a_record_too_deep_for_python_loads_with_its_field(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Python could not read its keys; DuckDB, which samples the head, does: `junk` is
    found and kept, not silently dropped."""
    deep = "[" * 10_000 + "]" * 10_000
    result = load(warehouse, tmp_path, [record(1), record(2, junk=deep)])
    assert (result.inserted, result.quarantined) == (2, 0)
    rows = warehouse.query("SELECT id, extra->>'junk' FROM rcs_records ORDER BY id")
    assert rows == [(1, None), (2, deep)]
