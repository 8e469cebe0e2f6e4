"""Views across channels, rendered from the record tables a warehouse holds.

`message_rates_daily` (RCS, SMS, voicemail drops: one row per day, channel, team and
campaign) and `call_outcomes_daily` (calls per day, team and campaign, by outcome, with
talk and wait time percentiles) read tables that exist only when their streams are
configured. Migration 7 creates both over what every warehouse has (`rcs_records`;
no calls yet, so `call_outcomes_daily` is empty); each time `migrate` provides a
stream's tables, both views are rebuilt over the record tables then present, so they
always create, and cover each channel from the pass that first loads it. `team_name`
comes from `teams` when that dimension is synced (NULL otherwise).

Definitions (README, Analytics): delivered = state 1 (or 4, read, for RCS); failed =
2 or 3; rejected = 3; pending = 0; delivery_rate = delivered / (delivered + failed);
read_rate = read / delivered, RCS only (SMS and voicemail have no read state). Day is
`"timestamp"::DATE` in the session's time zone.
"""

from __future__ import annotations

CHANNELS: tuple[tuple[str, str], ...] = (
    ("rcs", "rcs_records"),
    ("sms", "text_records"),
    ("voicemail", "voicemail_drop_records"),
)
"""(channel, records table) of the message channels, in the order the view lists them."""

VIEWS = ("message_rates_daily", "call_outcomes_daily")

CALL_OUTCOMES = (
    "succeeded",
    "bad_number",
    "outside_business_hours",
    "voicemail_detected",
    "relay_failed",
    "abandoned",
    "no_agent",
    "busy",
    "no_answer",
    "congestion",
    "policy_violation",
)
"""The column of each `error` value of call records (0 succeeded … 10 policy violation)."""


def _team_name(tables: set[str]) -> tuple[str, str]:
    """(select expression, join) giving each row its team's name where teams are synced."""
    if "teams" in tables:
        return "t.name", "LEFT JOIN teams AS t ON t.id = r.team"
    return "NULL::VARCHAR", ""


def message_rates_sql(tables: set[str]) -> str:
    name, join = _team_name(tables)
    parts = [
        f"""SELECT '{channel}' AS channel, r."timestamp"::DATE AS day, r.team,
               {name} AS team_name, r.campaign, r.state,
               {"r.state = 4" if channel == "rcs" else "false"} AS is_read,
               {"r.state IN (1, 4)" if channel == "rcs" else "r.state = 1"} AS is_delivered
        FROM {table} AS r {join}"""
        for channel, table in CHANNELS
        if table in tables
    ]
    return f"""CREATE OR REPLACE VIEW message_rates_daily AS
        WITH messages AS ({" UNION ALL ".join(parts)})
        SELECT day, channel, team, team_name, campaign,
               count(*) AS messages,
               count(*) FILTER (WHERE is_delivered) AS delivered,
               count(*) FILTER (WHERE is_read) AS "read",
               count(*) FILTER (WHERE state IN (2, 3)) AS failed,
               count(*) FILTER (WHERE state = 3) AS rejected,
               count(*) FILTER (WHERE state = 0) AS pending,
               count(*) FILTER (WHERE is_delivered)
                   / nullif(count(*) FILTER (WHERE state <> 0), 0) AS delivery_rate,
               count(*) FILTER (WHERE is_read)
                   / nullif(count(*) FILTER (WHERE is_delivered AND channel = 'rcs'), 0)
                   AS read_rate
        FROM messages
        GROUP BY day, channel, team, team_name, campaign"""


def call_outcomes_sql(tables: set[str]) -> str:
    outcomes = ", ".join(
        f"count(*) FILTER (WHERE error = {n}) AS {column}" for n, column in enumerate(CALL_OUTCOMES)
    )
    if "call_records" in tables:
        name, join = _team_name(tables)
        source = f"""SELECT r."timestamp"::DATE AS day, r.team, {name} AS team_name,
                   r.campaign, r.error, r.talk_duration, r.wait_duration
            FROM call_records AS r {join}"""
    else:  # no calls synced: the view exists, with its columns, and no rows
        source = """SELECT NULL::DATE AS day, NULL::BIGINT AS team, NULL::VARCHAR AS team_name,
                   NULL::BIGINT AS campaign, NULL::UTINYINT AS error,
                   NULL::BIGINT AS talk_duration, NULL::BIGINT AS wait_duration
            WHERE false"""
    return f"""CREATE OR REPLACE VIEW call_outcomes_daily AS
        WITH calls AS ({source})
        SELECT day, team, team_name, campaign,
               count(*) AS calls, {outcomes},
               quantile_cont(talk_duration, 0.5) AS talk_p50_s,
               quantile_cont(talk_duration, 0.9) AS talk_p90_s,
               quantile_cont(wait_duration, 0.5) AS wait_p50_s,
               quantile_cont(wait_duration, 0.9) AS wait_p90_s
        FROM calls
        GROUP BY day, team, team_name, campaign"""


def views_sql(tables: set[str]) -> list[str]:
    """The statements (re)creating both views over the record tables in `tables`."""
    return [message_rates_sql(tables), call_outcomes_sql(tables)]
