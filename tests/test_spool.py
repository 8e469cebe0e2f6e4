"""Cut spools: parts DuckDB parses in parallel must hold exactly the records of the body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.source.spool import SpoolWriter
from rcs_sync.warehouse.loader import stage
from rcs_sync.warehouse.privacy import PLAIN


def spooled(tmp_path: Path, body: bytes, *, chunk: int = 64, part_bytes: int = 200) -> Spool:
    with SpoolWriter(tmp_path / "spool", part_bytes=part_bytes) as writer:
        for start in range(0, len(body), chunk):
            writer.write(body[start : start + chunk])
        return writer.spool()


def records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "state": i % 5,
            "timestamp": "2026-03-01T10:21:14Z",
            "reference": 'a\n,b",\n{}',  # an escaped newline next to a comma: no cut
            "nested": {"deep": [1, 2, {"x": "y"}]},
        }
        for i in range(1, count + 1)
    ]


def per_line(items: list[dict[str, Any]], separator: str) -> bytes:
    return ("[" + separator.join(json.dumps(r) for r in items) + "]").encode()


def staged_rows(body: Spool) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    stage(con, RCS_RECORDS, body, server_limit=None, privacy=PLAIN)
    return con.execute(
        "SELECT id, state, reference, number, content_message, extra, _reason "
        "FROM _batch ORDER BY rowid"
    ).fetchall()


def test_a_body_with_one_record_per_line_is_cut_into_arrays_of_its_records(
    tmp_path: Path,
) -> None:
    items = records(60)
    for separator in ("\n,", ",\n", ",\r\n"):
        body = per_line(items, separator)
        spool = spooled(tmp_path / separator.encode().hex(), body)
        assert spool.cut and len(spool.parts) > 3
        assert [r for p in spool.parts for r in json.loads(p.read_bytes())] == items
        assert spool.whole().read_bytes() == body
        assert spool.size == len(body)


def layout(items: list[dict[str, Any]], name: str) -> bytes:
    """A body as servers lay them out: compact, one record per line, or indented."""
    if name == "compact":
        return json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()
    if name == "lines":
        return per_line(items, "\n,")
    return json.dumps(items, indent=3, ensure_ascii=False).encode()


TRICKY = ["},{", '"},{"', "]", "[{", '\\"},{\\', "a\n},\n{b", "é},{ü", "\\", '\\\\"']
"""String contents that look like separators, brackets, escapes, non-ASCII."""


def flat(count: int, texts: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "state": i % 5,
            "timestamp": "2026-03-01T10:21:14Z",
            "reference": texts[i % len(texts)],
            "content_message": texts[(i * 7) % len(texts)] * 3,
        }
        for i in range(1, count + 1)
    ]


def test_every_layout_is_cut_into_arrays_of_its_records(tmp_path: Path) -> None:
    items = flat(80, TRICKY)
    for name in ("compact", "lines", "pretty"):
        body = layout(items, name)
        spool = spooled(tmp_path / name, body, chunk=97, part_bytes=300)
        assert len(spool.parts) > 5, name
        assert [r for p in spool.parts for r in json.loads(p.read_bytes())] == items, name
        assert spool.whole().read_bytes() == body


def test_after_a_cut_at_a_line_break_only_line_breaks_are_cut_at(tmp_path: Path) -> None:
    """Strings are no longer followed once a cut fell at a line break: a later run of
    compact records, strings full of `},{`, is left whole rather than cut blind."""
    first, rest = flat(40, ["plain"]), flat(80, ['"},{"', "},{"])[40:]
    lines = per_line(first, "\n,")
    compact = json.dumps(rest, separators=(",", ":")).encode()
    body = lines[:-1] + b"\n," + compact[1:]
    spool = spooled(tmp_path, body, chunk=97, part_bytes=300)
    parts = [json.loads(p.read_bytes()) for p in spool.parts]
    assert len(parts) > 3
    assert [r for part in parts for r in part] == first + rest
    assert parts[-1][-len(rest) :] == rest, "the compact tail is not cut"


def test_the_loader_reads_a_cut_body_like_the_whole_one(tmp_path: Path) -> None:
    body = per_line(records(300), "\n,")
    spool = spooled(tmp_path, body, chunk=4096, part_bytes=4096)
    assert spool.cut
    assert staged_rows(spool) == staged_rows(Spool.of(spool.whole()))


def test_parts_are_private_and_remove_deletes_them_all(tmp_path: Path) -> None:
    spool = spooled(tmp_path, per_line(records(60), "\n,"))
    files = [*spool.parts, spool.whole()]
    assert {f.stat().st_mode & 0o777 for f in files} == {0o600}, "bodies hold phone numbers"
    spool.remove()
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_failed_write_leaves_no_part_behind(tmp_path: Path) -> None:
    try:
        with SpoolWriter(tmp_path / "spool", part_bytes=100) as writer:
            writer.write(per_line(records(20), "\n,"))
            raise RuntimeError("connection reset")
    except RuntimeError:
        pass
    assert list((tmp_path / "spool").iterdir()) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
record_strategy = st.fixed_dictionaries(
    {"id": st.integers(-3, 10**6), "state": st.integers(-1, 6)},
    optional={
        "reference": st.text(max_size=10),
        "timestamp": st.sampled_from(["2026-03-01T10:21:14Z", "soon", 5]),
        "junk": json_values,
    },
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=st.lists(record_strategy, min_size=1, max_size=40),
    indent=st.sampled_from([None, 1, 2]),
    separator=st.sampled_from(["\n,", ",\n", ", "]),
    part_bytes=st.integers(1, 300),
    chunk=st.integers(1, 97),
)
def test_whatever_the_layout_and_cuts_the_loader_sees_the_same_records(
    tmp_path_factory: Any,
    items: list[dict[str, Any]],
    indent: int | None,
    separator: str,
    part_bytes: int,
    chunk: int,
) -> None:
    """Pretty-printed bodies get cut inside records too: DuckDB must refuse those parts,
    and the loader must then read the body whole, never different records."""
    tmp = tmp_path_factory.mktemp("spool")
    body = ("[" + separator.join(json.dumps(r, indent=indent) for r in items) + "]").encode()
    spool = spooled(tmp, body, chunk=chunk, part_bytes=part_bytes)
    assert spool.whole().read_bytes() == body
    whole = tmp / "whole.json"
    whole.write_bytes(body)
    assert staged_rows(spool) == staged_rows(Spool.of(whole))


tricky_text = st.lists(st.sampled_from(TRICKY) | st.text(max_size=6), max_size=4).map("".join)
flat_record = st.fixed_dictionaries(
    {"id": st.integers(1, 10**6), "state": st.integers(0, 4)},
    optional={
        "reference": tricky_text,
        "number": tricky_text,
        "content_message": tricky_text,
        "timestamp": st.sampled_from(["2026-03-01T10:21:14Z", "2026-03-01T10:21:14.243Z"]),
    },
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    items=st.lists(flat_record, min_size=1, max_size=40),
    name=st.sampled_from(["compact", "lines", "pretty"]),
    part_bytes=st.integers(1, 400),
    chunk=st.integers(1, 200),
)
def test_any_layout_any_cut_any_string_the_parts_hold_exactly_the_records_sent(
    tmp_path_factory: Any,
    items: list[dict[str, Any]],
    name: str,
    part_bytes: int,
    chunk: int,
) -> None:
    """Records without nesting: every cut lands between records (each part parses as an
    array, together they are the records in order), and the loader stages the same rows
    as from the whole body, `content_message` included."""
    tmp = tmp_path_factory.mktemp("spool")
    body = layout(items, name)
    spool = spooled(tmp, body, chunk=chunk, part_bytes=part_bytes)
    assert spool.whole().read_bytes() == body
    assert [r for p in spool.parts for r in json.loads(p.read_bytes())] == items
    whole = tmp / "whole.json"
    whole.write_bytes(body)
    assert staged_rows(spool) == staged_rows(Spool.of(whole))
