"""The peer of `make bench-peer`, run by the interpreter of its own virtualenv (dlt and
its dependencies are not ours): the same records through dlt, the way its docs load a
REST API into DuckDB — a `@dlt.resource` with `primary_key="id"` and
`write_disposition="merge"`, one request per day as rcs-sync makes.

`python bench/peer_dlt.py BASE_URL START END DIRECTORY` (the token in
$RCS_SYNC_TOKEN); prints the records the destination holds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import dlt  # type: ignore[import-not-found, unused-ignore]
import duckdb
import requests


def main() -> None:
    base_url, start, end, directory = sys.argv[1:5]
    token = os.environ["RCS_SYNC_TOKEN"]
    first = datetime.fromisoformat(start.replace("Z", "+00:00"))
    last = datetime.fromisoformat(end.replace("Z", "+00:00"))

    @dlt.resource(name="rcs_records", primary_key="id", write_disposition="merge")  # type: ignore[untyped-decorator, unused-ignore]
    def rcs_records() -> Iterator[list[dict[str, Any]]]:
        day = first
        while day < last:
            upto = min(day + timedelta(days=1), last)
            resp = requests.get(
                f"{base_url}/j/rcs_records",
                params={
                    "start": day.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "end": upto.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
                headers={"Authorization": f"Bearer {token}"},
                timeout=300,
            )
            resp.raise_for_status()
            yield resp.json()
            day = upto

    database = os.path.join(directory, "peer.duckdb")
    pipeline = dlt.pipeline(
        pipeline_name="rcs_peer",
        destination=dlt.destinations.duckdb(database),
        dataset_name="rcs",
        pipelines_dir=os.path.join(directory, "pipelines"),
    )
    pipeline.run(rcs_records())
    with duckdb.connect(database, read_only=True) as con:
        row = con.execute("SELECT count(*) FROM rcs.rcs_records").fetchone()
    print(row[0] if row else 0)


if __name__ == "__main__":
    main()
