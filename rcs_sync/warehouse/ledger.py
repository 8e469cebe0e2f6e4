"""The completed-window ledger (`sync_windows`): recording a read window, and pruning the
rows no plan can use any more, in the transaction of the batch that makes them so.

Tiered re-reads add a row per cell read (~1,200 a day per stream); kept, the ledger
would grow without end. Every plan reads the ledger through two questions, so a row that
changes neither answer can go:

- *coverage*: is every point of a span covered by some row (read at or after a time,
  for a catch-up or a forced backfill: `windows.plan_windows`)? — the resume of a
  killed backfill;
- *freshness*: when was each point last read (`windows.freshness`)? — the re-read
  planner and the checkpoint.

Three rules, each keeping both answers wherever they are asked:

1. **Superseded** (anywhere): a row whose window lies inside a later read's window
   (`fetched_at` at least as late; the same window read twice at the same instant keeps
   one row). The later row covers each of its points, at a later time. A new row that
   such a row supersedes already is not written.
2. **Settled** (beyond the horizon): a row whose window ended longer than the commit's
   `horizon` (update horizon plus clock-skew margin) before the commit's read, so no
   re-read or checkpoint looks there again; read longer than `CATCHUP_FRESHNESS` before
   it, so no resumable catch-up counts on it; and inside another row's window (strictly
   larger, or the same one read later). Coverage stays; only how fresh a final period
   looks changes, and nothing asks that. Candidates are the rows that ended within one
   more horizon before that, so each commit reads a bounded slice; rows that left the
   horizon while no pass ran for longer than that stay (harmless, just kept).

3. **Merged** (beyond the horizon, as rule 2): touching or overlapping rows within one
   UTC day, none of them read since `CATCHUP_FRESHNESS`, become one row over their
   union, read at the oldest of their reads (records summed: a density hint only).
   Coverage stays; a final period looks as fresh as its stalest part, which only a
   catch-up might ask, and it re-reads rows that old anyway.

What remains: per cell of the horizon its newest read, beyond it about one row per day
of history (the backfill's windows, or the day's re-read cells merged). The rules are
idempotent; a crash undoes them with the batch's transaction.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from rcs_sync.model.commits import Commit
from rcs_sync.model.windows import CATCHUP_FRESHNESS

_SCOPE = "stream = $stream AND scope = $scope"
_INSIDE_NEW = "window_start >= $start AND window_end <= $end AND fetched_at <= $fetched"
_SETTLED = f"""
DELETE FROM sync_windows WHERE rowid IN (
    WITH mine AS (SELECT rowid AS r, * FROM sync_windows WHERE {_SCOPE}
                  AND window_end >= $since)
    SELECT a.r FROM mine AS a JOIN mine AS b
      ON b.window_start <= a.window_start AND b.window_end >= a.window_end
     AND (b.window_start < a.window_start OR b.window_end > a.window_end
          OR (b.fetched_at, b.r) > (a.fetched_at, a.r))
    WHERE a.window_end < $final AND a.fetched_at < $fresh
)
"""
_ISLANDS = f"""
CREATE OR REPLACE TEMP TABLE _ledger_merge AS
WITH c AS (
    SELECT rowid AS r, *, time_bucket(INTERVAL 1 DAY, window_start) AS day
    FROM sync_windows
    WHERE {_SCOPE} AND window_end >= $since AND window_end < $final AND fetched_at < $fresh
      AND window_end <= time_bucket(INTERVAL 1 DAY, window_start) + INTERVAL 1 DAY
), reach AS (
    SELECT *, max(window_end) OVER (PARTITION BY day ORDER BY window_start, window_end
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM c
), islands AS (
    SELECT *, count(*) FILTER (WHERE reach IS NULL OR window_start > reach)
                  OVER (PARTITION BY day ORDER BY window_start, window_end
                        ROWS UNBOUNDED PRECEDING) AS island
    FROM reach
)
SELECT list(r) AS rows, min(window_start) AS window_start, max(window_end) AS window_end,
       min(fetched_at) AS fetched_at, sum(records) AS records, max(run_id) AS run_id,
       max(completed_at) AS completed_at
FROM islands GROUP BY day, island HAVING count(*) > 1
"""


def record(con: duckdb.DuckDBPyConnection, commit: Commit, received: int, now: datetime) -> None:
    """Write the commit's window as read (unless a later read already covers it), and
    prune what it makes redundant: rule 1 always, rules 2 and 3 once a pass, with the
    batch that completes it (it carries the checkpoint) and the commit's `horizon`."""
    window = commit.window
    if window is None:
        return
    params = {
        "stream": commit.stream.name,
        "scope": commit.scope,
        "start": window.start,
        "end": window.end,
        "fetched": commit.fetched_at,
    }
    con.execute(f"DELETE FROM sync_windows WHERE {_SCOPE} AND {_INSIDE_NEW}", params)
    con.execute(
        "INSERT INTO sync_windows SELECT $stream, $scope, $start, $end, $fetched, $received, "
        f"$run, $now WHERE NOT EXISTS (FROM sync_windows WHERE {_SCOPE} "
        "AND window_start <= $start AND window_end >= $end AND fetched_at >= $fetched)",
        {**params, "received": received, "run": commit.run_id, "now": now},
    )
    if commit.horizon is not None and commit.checkpoint is not None:
        final = commit.fetched_at - commit.horizon
        settled = {
            "stream": commit.stream.name,
            "scope": commit.scope,
            "since": final - commit.horizon,
            "final": final,
            "fresh": commit.fetched_at - CATCHUP_FRESHNESS,
        }
        con.execute(_SETTLED, settled)
        con.execute(_ISLANDS, settled)
        con.execute(
            "DELETE FROM sync_windows WHERE rowid IN (SELECT unnest(rows) FROM _ledger_merge)"
        )
        con.execute(
            "INSERT INTO sync_windows SELECT $stream, $scope, window_start, window_end, "
            "fetched_at, records, run_id, completed_at FROM _ledger_merge",
            {"stream": commit.stream.name, "scope": commit.scope},
        )
