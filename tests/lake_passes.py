"""Many small passes into a real lake with maintenance between them: the lake's files
stay bounded. `tests/test_maintenance.py` runs 150 of them, `bench/lake_bench.py` 1,000
(the issue's figure; a DuckLake commit on a PostgreSQL catalog costs ~0.12-0.18 s here,
too slow for 1,000 in `make test`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from rcs_sync.config import MaintenanceSettings
from rcs_sync.warehouse import maintenance
from rcs_sync.warehouse.maintenance import Report

NOW = MaintenanceSettings(expire_snapshots_after=timedelta(), remove_files_after=timedelta())
"""Everything old enough at once: what a test can wait for."""

PASS_SQL = (
    """MERGE INTO rcs_records USING (
        SELECT $n * 15 + range AS id, 7 AS campaign, 70 AS job, 2 AS team,
               '+33612345678' AS number, 'ref' AS reference, NULL AS portal,
               ($n + range) % 5 AS state, now() AS ts
        FROM range(25)) s ON rcs_records.id = s.id
    WHEN MATCHED THEN UPDATE SET state = s.state, updated_at = s.ts
    WHEN NOT MATCHED THEN INSERT (id, campaign, job, team, number, reference, portal, state,
        "timestamp", first_seen_at, updated_at)
        VALUES (s.id, s.campaign, s.job, s.team, s.number, s.reference, s.portal, s.state,
        s.ts, s.ts, s.ts)""",
    "INSERT INTO rcs_state_changes SELECT $n * 15 + range, NULL, 1, now() FROM range(25)",
    "UPDATE sync_checkpoints SET checkpoint = now(), updated_at = now()",
)
"""One small incremental pass as the loader commits it: a few records upserted (10 of
them updated), their state changes, the checkpoint, in one transaction (`Lake.commit_batch`
does the same with staging, at several times the cost: too slow for 1,000 of them here)."""


def small_passes(
    catalog: str, tmp: Path, passes: int, every: int = 100
) -> tuple[list[Report], tuple[int, int]]:
    """`passes` small passes through the real lake schema, maintained every `every`
    passes; the maintenance reports and (count, max id) of the records."""
    from rcs_sync.warehouse.lake import Lake  # noqa: PLC0415 - the lake venv's

    # One thread: a commit this small costs half as much without a second one to wake.
    lake = Lake(catalog, str(tmp / "data"), spool_dir=tmp / "spool", threads=1)
    lake.migrate()
    reports = []
    with lake.held(), lake.connect() as con:
        con.execute("INSERT INTO sync_checkpoints VALUES ('rcs_records', 'all', now(), now())")
        for n in range(passes):
            con.execute("BEGIN")
            for sql in PASS_SQL:
                con.execute(sql, {"n": n} if "$n" in sql else {})
            con.execute("COMMIT")
            if n % every == every - 1:  # [maintenance] every = `every` intervals
                reports.append(maintenance.maintain(con, NOW))
        row = con.execute("SELECT count(*), max(id) FROM rcs_records").fetchone()
    assert row is not None
    return reports, (int(row[0]), int(row[1]))
