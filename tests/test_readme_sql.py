"""Every ```sql block of the README runs against the fixture warehouse and returns rows,
so the cookbook cannot drift from the schema unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from rcs_sync.model.streams import CALL_RECORDS, RCS_RECORDS, TEAMS, TEXT_RECORDS
from rcs_sync.warehouse.duckdb_file import Warehouse
from tests.fixtures import build_warehouse

README = Path(__file__).resolve().parent.parent / "README.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```$", re.DOTALL | re.MULTILINE)
BLOCKS = SQL_BLOCK.findall(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture warehouse, with SMS, calls and teams beside its RCS records, as a
    warehouse syncing those streams has them."""
    path = build_warehouse(tmp_path_factory.mktemp("readme") / "rcs.duckdb")
    Warehouse(path, streams=(RCS_RECORDS, TEXT_RECORDS, CALL_RECORDS, TEAMS)).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO teams SELECT i, 'Team ' || i, NULL, now(), now() FROM range(4) r(i)"
        )
        con.execute(
            'INSERT INTO text_records (id, team, campaign, state, "timestamp", first_seen_at, '
            'updated_at) SELECT id, team, campaign, least(state, 3), "timestamp", now(), now() '
            "FROM rcs_records"
        )
        con.execute(
            "INSERT INTO call_records (id, team, campaign, error, talk_duration, wait_duration, "
            '"timestamp", first_seen_at, updated_at) SELECT id, team, campaign, id % 11, '
            '(id * 7) % 300, id % 40, "timestamp", now(), now() FROM rcs_records'
        )
    return path


def test_the_readme_has_a_cookbook() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("sql", BLOCKS, ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_sql_runs_and_returns_rows(warehouse: Path, sql: str) -> None:
    # A fresh connection per block: a block's SET TimeZone must not leak into the next.
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(sql).fetchall()
    assert rows, f"no rows from:\n{sql}"
