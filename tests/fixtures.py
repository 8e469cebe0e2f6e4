"""A small warehouse with known contents, for the analytics views, the report and the README.

15 records over three consecutive UTC days ending today (the README's cookbook asks
for "this week"), two teams, three campaigns plus one record without a campaign:

    id  team campaign state       timestamp (UTC)
     1    1     10    4 read      DAY1 09:00
     2    1     10    1 delivered DAY1 09:05
     3    1     10    2 failed    DAY1 09:10
     4    1     11    4 read      DAY1 10:00
     5    1     11    0 sent      DAY1 10:05
     6    2     20    1 delivered DAY1 11:00
     7    2     20    3 rejected  DAY1 11:05
     8    2     20    4 read      DAY1 23:30   DAY2 00:30 or 01:30 in Europe/Paris
     9    1     10    4 read      DAY2 08:00
    10    1     11    1 delivered DAY2 08:30
    11    2     20    2 failed    DAY2 09:00
    12    2     20    4 read      DAY2 09:30
    13    2   NULL    1 delivered DAY2 12:00
    14    1     10    0 sent      DAY3 10:00   DAY3 has only pending messages
    15    2     20    0 sent      DAY3 11:00

The state history (`HISTORY`) covers ids 1-6, 8 and 9; the others were loaded before
it existed. Two quarantined records give the quarantine review something to show.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb

from rcs_sync.warehouse.duckdb_file import Warehouse

DAY3 = datetime.now(UTC).date()
DAY2 = DAY3 - timedelta(days=1)
DAY1 = DAY3 - timedelta(days=2)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


RECORDS: list[tuple[int, int, int | None, int, datetime]] = [
    (1, 1, 10, 4, at(DAY1, 9)),
    (2, 1, 10, 1, at(DAY1, 9, 5)),
    (3, 1, 10, 2, at(DAY1, 9, 10)),
    (4, 1, 11, 4, at(DAY1, 10)),
    (5, 1, 11, 0, at(DAY1, 10, 5)),
    (6, 2, 20, 1, at(DAY1, 11)),
    (7, 2, 20, 3, at(DAY1, 11, 5)),
    (8, 2, 20, 4, at(DAY1, 23, 30)),
    (9, 1, 10, 4, at(DAY2, 8)),
    (10, 1, 11, 1, at(DAY2, 8, 30)),
    (11, 2, 20, 2, at(DAY2, 9)),
    (12, 2, 20, 4, at(DAY2, 9, 30)),
    (13, 2, None, 1, at(DAY2, 12)),
    (14, 1, 10, 0, at(DAY3, 10)),
    (15, 2, 20, 0, at(DAY3, 11)),
]
"""(id, team, campaign, state, timestamp)."""

HISTORY: list[tuple[int, int | None, int, datetime]] = [
    (1, None, 0, at(DAY1, 9)),  # first seen as sent: observed at its own timestamp
    (1, 0, 1, at(DAY1, 9, 5)),
    (1, 1, 4, at(DAY1, 9, 35)),
    (2, None, 0, at(DAY1, 9, 5)),
    (2, 0, 1, at(DAY1, 9, 10)),
    (3, None, 0, at(DAY1, 9, 10)),
    (3, 0, 2, at(DAY1, 9, 15)),
    (4, None, 4, at(DAY1, 10, 5)),  # already read when first seen
    (5, None, 0, at(DAY1, 10, 5)),
    (6, None, 0, at(DAY1, 11)),
    (6, 0, 1, at(DAY1, 11, 10)),
    (8, None, 0, at(DAY1, 23, 30)),
    (8, 0, 4, at(DAY2, 0, 10)),  # delivered and read between two passes
    (9, None, 1, at(DAY2, 8, 5)),
    (9, 1, 4, at(DAY2, 10)),
]
"""(id, from_state, to_state, observed_at) rows of rcs_state_changes."""

QUARANTINE: list[tuple[int, str, str, str]] = [
    (1, "101", "state: unknown value", '{"id":101,"state":9}'),
    (1, "102", "id: not an integer", '{"id":"102","state":1}'),
]
"""(run_id, record_id, reason, raw) rows of rcs_quarantine."""


def build_warehouse(path: Path) -> Path:
    """Create the warehouse at `path` with the real migrations, then the rows above."""
    Warehouse(path).migrate()
    with duckdb.connect(str(path)) as con:
        con.executemany(
            'INSERT INTO rcs_records (id, team, campaign, state, "timestamp", first_seen_at, '
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(*record, record[-1], record[-1]) for record in RECORDS],
        )
        con.executemany(
            "INSERT INTO rcs_state_changes (id, from_state, to_state, observed_at) "
            "VALUES (?, ?, ?, ?)",
            HISTORY,
        )
        con.executemany(
            "INSERT INTO rcs_quarantine (run_id, record_id, reason, raw, quarantined_at) "
            "VALUES (?, ?, ?, ?, now())",
            QUARANTINE,
        )
    return path
