"""The state-change history is appended with the upsert, exactly once per change."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Site


def test_first_sightings_and_every_state_change_are_logged(site: Callable[..., Site]) -> None:
    s = site(records=4_000, days=5)
    s.ok("sync")
    first = s.query(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE from_state IS NOT NULL) "
        "FROM rcs_state_changes"
    )
    [(records,)] = s.query("SELECT count(*) FROM rcs_records")
    assert first == [(records, records, 0)]
    # A record first seen as sent is dated by its own timestamp, the API's send time.
    assert s.query(
        "SELECT count(*) FROM rcs_state_changes c JOIN rcs_records r USING (id) "
        "WHERE c.to_state = 0 AND c.observed_at <> r.timestamp"
    ) == [(0,)]
    before = s.table()

    s.sim.sim.advance(600)
    s.sim.sim.mutate(60)
    s.ok("sync")
    s.assert_converged()
    after = s.table()
    changed = {i: (before[i], after[i]) for i in before if before[i] != after[i]}
    assert len(changed) >= 60
    logged = s.query(
        "SELECT id, from_state, to_state, observed_at FROM rcs_state_changes "
        "WHERE from_state IS NOT NULL"
    )
    assert {i: (a, b) for i, a, b, _ in logged} == changed
    assert len(logged) == len(changed), "a change was logged twice"
    server_now = s.sim.sim.now()
    assert all(observed <= server_now for *_, observed in logged)

    # An identical pass logs nothing new.
    s.ok("sync")
    assert len(s.query("SELECT * FROM rcs_state_changes WHERE from_state IS NOT NULL")) == len(
        changed
    )
