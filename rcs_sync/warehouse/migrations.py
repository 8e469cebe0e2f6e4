"""Numbered schema migrations; each runs once, in order, and is recorded in the database.

Never edit a migration that has shipped: add a new one. The primary key is the only
index on the records table (DuckDB's ART indexes are costly to maintain on bulk
upserts), and keys are never updated.
"""

from __future__ import annotations

from rcs_sync.warehouse.channels import views_sql

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "core tables: records, quarantine, checkpoints, windows, runs",
        """
        CREATE TABLE rcs_records (
            id BIGINT PRIMARY KEY,
            campaign BIGINT,
            job BIGINT,
            team BIGINT,
            number VARCHAR,
            reference VARCHAR,
            portal VARCHAR,
            state UTINYINT NOT NULL,
            "timestamp" TIMESTAMPTZ NOT NULL,
            content_message VARCHAR,
            extra JSON,
            first_seen_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE rcs_quarantine (
            run_id BIGINT,
            record_id VARCHAR,
            reason VARCHAR NOT NULL,
            raw VARCHAR,
            quarantined_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE sync_checkpoints (
            stream VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            checkpoint TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (stream, scope)
        );
        CREATE TABLE sync_windows (
            stream VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            window_start TIMESTAMPTZ NOT NULL,
            window_end TIMESTAMPTZ NOT NULL,
            fetched_at TIMESTAMPTZ NOT NULL,
            records BIGINT NOT NULL,
            run_id BIGINT,
            completed_at TIMESTAMPTZ NOT NULL
        );
        CREATE SEQUENCE sync_runs_id;
        CREATE TABLE sync_runs (
            run_id BIGINT PRIMARY KEY DEFAULT nextval('sync_runs_id'),
            stream VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            command VARCHAR NOT NULL,
            mode VARCHAR,
            pid INTEGER,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            status VARCHAR NOT NULL,
            windows INTEGER NOT NULL DEFAULT 0,
            received BIGINT NOT NULL DEFAULT 0,
            inserted BIGINT NOT NULL DEFAULT 0,
            updated BIGINT NOT NULL DEFAULT 0,
            quarantined BIGINT NOT NULL DEFAULT 0,
            checkpoint TIMESTAMPTZ,
            error VARCHAR
        );
        """,
    ),
    (
        2,
        "sync_runs.error_kind: what kind of failure ended a run (auth, api, warehouse, …)",
        "ALTER TABLE sync_runs ADD COLUMN error_kind VARCHAR;",
    ),
    (
        3,
        "rcs_state_changes: every state a record was first seen in or moved to",
        """
        CREATE TABLE rcs_state_changes (
            id BIGINT NOT NULL,
            from_state UTINYINT,
            to_state UTINYINT NOT NULL,
            observed_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    (
        4,
        "analytics views: daily and per-campaign delivery/read rates, message timings",
        """
        CREATE VIEW rcs_rates_daily AS
        WITH quarter_hours AS (
            -- Converting each record's timestamp to a local date (ICU) dominates a full
            -- scan; every zone's UTC offset has been a whole number of quarter hours
            -- since 1972, so count per UTC quarter hour with integer arithmetic and
            -- convert only the buckets to days in the session's TimeZone.
            SELECT make_timestamptz(epoch_us("timestamp") // 900000000 * 900000000) AS quarter,
                   team,
                   campaign,
                   count(*) AS messages,
                   count(*) FILTER (WHERE state = 0) AS state_sent,
                   count(*) FILTER (WHERE state = 1) AS state_delivered,
                   count(*) FILTER (WHERE state = 2) AS state_failed,
                   count(*) FILTER (WHERE state = 3) AS state_rejected,
                   count(*) FILTER (WHERE state = 4) AS state_read
            FROM rcs_records
            GROUP BY ALL
        )
        SELECT quarter::DATE AS day,
               team,
               campaign,
               sum(messages)::BIGINT AS messages,
               sum(state_sent)::BIGINT AS state_sent,
               sum(state_delivered)::BIGINT AS state_delivered,
               sum(state_failed)::BIGINT AS state_failed,
               sum(state_rejected)::BIGINT AS state_rejected,
               sum(state_read)::BIGINT AS state_read,
               sum(state_delivered + state_read)::BIGINT AS delivered,
               sum(state_read)::BIGINT AS "read",
               sum(state_failed + state_rejected)::BIGINT AS failed,
               sum(state_sent)::BIGINT AS pending,
               sum(state_delivered + state_read) / nullif(sum(messages - state_sent), 0)
                   AS delivery_rate,
               sum(state_read) / nullif(sum(state_delivered + state_read), 0) AS read_rate
        FROM quarter_hours
        GROUP BY ALL;

        CREATE VIEW rcs_rates_campaign AS
        SELECT campaign,
               min("timestamp") AS first_message_at,
               max("timestamp") AS last_message_at,
               count(*) AS messages,
               count(*) FILTER (WHERE state = 0) AS state_sent,
               count(*) FILTER (WHERE state = 1) AS state_delivered,
               count(*) FILTER (WHERE state = 2) AS state_failed,
               count(*) FILTER (WHERE state = 3) AS state_rejected,
               count(*) FILTER (WHERE state = 4) AS state_read,
               count(*) FILTER (WHERE state IN (1, 4)) AS delivered,
               count(*) FILTER (WHERE state = 4) AS "read",
               count(*) FILTER (WHERE state IN (2, 3)) AS failed,
               count(*) FILTER (WHERE state = 0) AS pending,
               count(*) FILTER (WHERE state IN (1, 4))
                   / nullif(count(*) FILTER (WHERE state IN (1, 2, 3, 4)), 0) AS delivery_rate,
               count(*) FILTER (WHERE state = 4)
                   / nullif(count(*) FILTER (WHERE state IN (1, 4)), 0) AS read_rate
        FROM rcs_records
        GROUP BY ALL;

        CREATE VIEW rcs_message_timings AS
        SELECT r.id, r.team, r.campaign, r."timestamp" AS sent_at,
               min(c.observed_at) FILTER (WHERE c.to_state IN (1, 4)) AS delivered_observed_at,
               min(c.observed_at) FILTER (WHERE c.to_state = 4) AS read_observed_at,
               min(c.observed_at) FILTER (WHERE c.to_state IN (1, 4)) - r."timestamp"
                   AS time_to_deliver,
               min(c.observed_at) FILTER (WHERE c.to_state = 4) - r."timestamp" AS time_to_read
        FROM rcs_records AS r JOIN rcs_state_changes AS c USING (id)
        GROUP BY r.id, r.team, r.campaign, r."timestamp";
        """,
    ),
    (
        5,
        "sync_splits: periods whose reads had to be split, and the window span they need",
        """
        CREATE TABLE sync_splits (
            stream VARCHAR NOT NULL,
            scope VARCHAR NOT NULL,
            period_start TIMESTAMPTZ NOT NULL,
            period_end TIMESTAMPTZ NOT NULL,
            span INTERVAL NOT NULL,
            reason VARCHAR NOT NULL,
            recorded_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (stream, scope, period_start, period_end)
        );
        """,
    ),
    (
        6,
        "rcs_message_timings: measure only what was seen happen (not records first seen late)",
        """
        -- A record first seen already delivered (a backfill, a catch-up) was delivered at
        -- some unknown time before the pass that saw it: counting from that pass made
        -- a backfill's month-old records "30 days to deliver". Time to deliver now
        -- needs the record seen as sent first; time to read, seen as sent or delivered
        -- first (the read observed as a change, never as a first sighting).
        CREATE OR REPLACE VIEW rcs_message_timings AS
        WITH observed AS (
            SELECT id,
                   min(observed_at) FILTER (WHERE to_state IN (1, 4)) AS delivered_observed_at,
                   min(observed_at) FILTER (WHERE to_state = 4) AS read_observed_at,
                   any_value(to_state) FILTER (WHERE from_state IS NULL) AS first_seen_state,
                   bool_or(from_state IS NULL AND to_state = 0) AS seen_sent,
                   bool_or(to_state = 4 AND from_state IN (0, 1)) AS seen_read
            FROM rcs_state_changes
            GROUP BY id
        )
        SELECT r.id, r.team, r.campaign, r."timestamp" AS sent_at,
               o.delivered_observed_at,
               o.read_observed_at,
               CASE WHEN o.seen_sent THEN o.delivered_observed_at - r."timestamp" END
                   AS time_to_deliver,
               CASE WHEN o.seen_read THEN o.read_observed_at - r."timestamp" END
                   AS time_to_read,
               o.first_seen_state
        FROM rcs_records AS r JOIN observed AS o USING (id);
        """,
    ),
    (
        7,
        "message_rates_daily and call_outcomes_daily: rates across channels",
        # Over the tables every warehouse has; `migrate` rebuilds both over the channels
        # present whenever it provides a stream's tables (warehouse/channels.py).
        ";\n".join(views_sql({"rcs_records"})) + ";",
    ),
)

VIEWS_ONLY = frozenset({4, 6, 7})
"""Migrations that only create views. A schema created from the declarations (a lake:
`Dialect.from_declarations`) runs these as they are, in order; the tables the others
created are declared in `tables.py` (tests/test_stream_tables.py holds both equal)."""
