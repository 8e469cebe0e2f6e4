"""Time to deliver and time to read count only what was seen happen: on a backfilled
warehouse, no record is measured from the pass that first saw it already delivered."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Site
from tests.test_readme_sql import BLOCKS

COOKBOOK = next(sql for sql in BLOCKS if "rcs_message_timings" in sql)


def test_a_backfill_measures_nothing_later_passes_measure_what_they_saw(
    site: Callable[..., Site],
) -> None:
    s = site(records=4_000, days=30, sync={"update_horizon": "32d"})
    s.ok("sync")  # the first run: a backfill of 30 days, most records long settled
    [(first_seen_delivered,)] = s.query(
        "SELECT count(*) FROM rcs_state_changes WHERE from_state IS NULL AND to_state IN (1, 4)"
    )
    assert first_seen_delivered > 2_000
    # Their delivery happened at some unknown time before the backfill saw them.
    [(records,)] = s.query("SELECT count(*) FROM rcs_records")
    assert s.query(
        "SELECT count(*), count(delivered_observed_at), count(time_to_deliver), "
        "count(time_to_read) FROM rcs_message_timings"
    ) == [(records, first_seen_delivered, 0, 0)]
    # The cookbook's percentiles have nothing to measure yet, rather than "15 days".
    rows = s.query(COOKBOOK.replace("now() - INTERVAL 30 DAY", "TIMESTAMPTZ '2000-01-01'"))
    assert all(row[1] == 0 and row[3] == 0 for row in rows), rows

    s.sim.sim.advance(600)
    changed = s.sim.sim.mutate(300)
    s.ok("sync")
    measured = s.query(
        "SELECT count(time_to_deliver), count(time_to_read), "
        "count(*) FILTER (WHERE time_to_deliver IS NOT NULL AND first_seen_state <> 0), "
        "count(*) FILTER (WHERE time_to_read IS NOT NULL AND first_seen_state NOT IN (0, 1)), "
        "count(*) FILTER (WHERE epoch(time_to_deliver) < 0 OR epoch(time_to_read) < 0) "
        "FROM rcs_message_timings"
    )
    [(delivers, reads, from_backfill_deliver, from_backfill_read, negative)] = measured
    assert delivers + reads > 0, f"no change measured among {len(changed)} changed records"
    assert (from_backfill_deliver, from_backfill_read, negative) == (0, 0, 0)
    # Every measured time ends at the pass that saw the change, after the first sighting.
    assert s.query(
        "SELECT count(*) FROM rcs_message_timings t JOIN rcs_state_changes c "
        "ON c.id = t.id AND c.from_state IS NULL "
        "WHERE t.time_to_deliver IS NOT NULL AND t.delivered_observed_at <= c.observed_at"
    ) == [(0,)]
