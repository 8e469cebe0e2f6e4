"""Every ```sql block of the README runs against the fixture warehouse and returns rows,
so the cookbook cannot drift from the schema unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from tests.fixtures import build_warehouse

README = Path(__file__).resolve().parent.parent / "README.md"
SQL_BLOCK = re.compile(r"^```sql\n(.*?)^```$", re.DOTALL | re.MULTILINE)
BLOCKS = SQL_BLOCK.findall(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_warehouse(tmp_path_factory.mktemp("readme") / "rcs.duckdb")


def test_the_readme_has_a_cookbook() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("sql", BLOCKS, ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_sql_runs_and_returns_rows(warehouse: Path, sql: str) -> None:
    # A fresh connection per block: a block's SET TimeZone must not leak into the next.
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(sql).fetchall()
    assert rows, f"no rows from:\n{sql}"
