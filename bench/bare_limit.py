"""The bare limit of `make bench` (2): what the machine can do with one response, with
none of rcs-sync's work. Downloads the body with requests into a file, then one
`read_json` + `INSERT … ON CONFLICT` into an empty table with the records' primary key.

Run as its own process, as the backfill it is set against is, so both pay interpreter
start-up and their imports: `python bench/bare_limit.py BASE_URL START END` (the token
in $RCS_SYNC_TOKEN). Prints the seconds from the request to the commit, which leave
those out.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import requests

COLUMNS = (
    "{campaign:'BIGINT', id:'BIGINT', job:'BIGINT', number:'VARCHAR', portal:'VARCHAR',"
    " reference:'VARCHAR', state:'UTINYINT', team:'BIGINT', timestamp:'TIMESTAMPTZ'}"
)
TABLE = (
    "CREATE TABLE r (id BIGINT PRIMARY KEY, campaign BIGINT, job BIGINT, team BIGINT,"
    " number VARCHAR, reference VARCHAR, portal VARCHAR, state UTINYINT, timestamp TIMESTAMPTZ)"
)


def bare_once(base_url: str, start: str, end: str, token: str) -> float:
    with tempfile.TemporaryDirectory(prefix="rcs-bare-") as tmp:
        body = Path(tmp) / "body.json"
        began = time.perf_counter()
        with (
            requests.get(
                f"{base_url}/j/rcs_records",
                params={"start": start, "end": end},
                headers={"Authorization": f"Bearer {token}"},
                stream=True,
                timeout=120,
            ) as resp,
            body.open("wb") as out,
        ):
            resp.raise_for_status()
            for chunk in resp.iter_content(1 << 20):
                out.write(chunk)
        with duckdb.connect(str(Path(tmp) / "bare.duckdb")) as con:
            con.execute(TABLE)
            con.execute(
                f"INSERT INTO r SELECT id, campaign, job, team, number, reference, portal,"
                f" state, timestamp FROM read_json(?, format='array', columns={COLUMNS})"
                f" ON CONFLICT DO UPDATE SET state = excluded.state",
                [str(body)],
            )
        return time.perf_counter() - began


if __name__ == "__main__":
    base_url, start, end = sys.argv[1:4]
    print(bare_once(base_url, start, end, os.environ["RCS_SYNC_TOKEN"]))
