"""`rcs-sync simulate` (and `python -m rcs_sim`): the simulator's command line.

`rcs_sync.cli` names this command only as a string and imports it when it is invoked,
so no other command, and never the daemon, loads the simulator.
"""

from __future__ import annotations

import os
import sys

import click

from rcs_sim.endpoints import SIBLINGS, sibling
from rcs_sim.population import BOUNDS, FAULT_KINDS
from rcs_sim.server import FORMATS, SimConfig, serve_forever


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--records", type=click.IntRange(0), default=10_000, show_default=True)
@click.option("--days", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--teams", type=click.IntRange(1), default=3, show_default=True)
@click.option("--campaigns", type=click.IntRange(1), default=20, show_default=True)
@click.option("--arrival-rate", type=click.FloatRange(0), default=0.0, help="New records/s.")
@click.option("--frozen", is_flag=True, help="Clock moves only via POST /_sim/advance.")
@click.option("--clock-offset", type=float, default=0.0, help="Server clock skew, seconds.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--faults",
    default="429,500,503,drop,truncate",
    show_default=True,
    help=f"Comma-separated fault kinds from: {', '.join(FAULT_KINDS)}.",
)
@click.option("--latency", type=click.FloatRange(0), default=0.0, help="Seconds per request.")
@click.option(
    "--format",
    "layout",
    type=click.Choice(FORMATS),
    default="lines",
    show_default=True,
    help="Body layout: one record per line, compact [{…},{…}], or indented objects.",
)
@click.option(
    "--bandwidth", type=click.FloatRange(0), default=0.0, help="Bytes/s per connection (0: any)."
)
@click.option(
    "--server-time",
    type=click.FloatRange(0),
    default=0.0,
    help="Seconds of server work per 100k records served (its own work included).",
)
@click.option("--gzip", "gzipped", is_flag=True, help="Gzip bodies for clients that accept it.")
@click.option("--truncate-at", type=click.IntRange(1), help="Silently cut responses at N records.")
@click.option("--bounds", type=click.Choice(BOUNDS), default="[)", show_default=True)
@click.option("--bad-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--extra-fields", is_flag=True, help="Add an undocumented field to some records.")
@click.option(
    "--streams",
    "siblings",
    default="",
    help="Also serve these sibling endpoints, comma-separated: "
    f"{', '.join([*SIBLINGS, 'teams'])} (each with --records records over --days days).",
)
def simulate(
    *,
    port: int,
    records: int,
    days: float,
    seed: int,
    teams: int,
    campaigns: int,
    arrival_rate: float,
    frozen: bool,
    clock_offset: float,
    fault_rate: float,
    faults: str,
    latency: float,
    layout: str,
    bandwidth: float,
    server_time: float,
    gzipped: bool,
    truncate_at: int | None,
    bounds: str,
    bad_fraction: float,
    extra_fields: bool,
    siblings: str,
) -> None:
    """Serve the built-in API simulator on 127.0.0.1 (token: $RCS_SIM_TOKEN or sim-token)."""
    kinds = tuple(k.strip() for k in faults.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise click.BadParameter(
            f"unknown fault kind(s): {', '.join(unknown)}", param_hint="--faults"
        )
    names = [n.strip() for n in siblings.split(",") if n.strip()]
    strange = [n for n in names if n not in (*SIBLINGS, "teams")]
    if strange:
        raise click.BadParameter(f"unknown stream(s): {', '.join(strange)}", param_hint="--streams")
    config = SimConfig(
        records=records,
        days=days,
        arrival_rate=arrival_rate,
        teams=teams,
        campaigns=campaigns,
        seed=seed,
        token=os.environ.get("RCS_SIM_TOKEN", SimConfig.token),
        frozen=frozen,
        clock_offset=clock_offset,
        fault_rate=fault_rate,
        faults=kinds,
        latency=latency,
        format=layout,
        bandwidth=bandwidth,
        server_time=server_time,
        gzip=gzipped,
        truncate_at=truncate_at,
        bounds=bounds,
        bad_fraction=bad_fraction,
        extra_fields=extra_fields,
        endpoints=tuple(sibling(n, records=records, days=days) for n in names if n in SIBLINGS),
        serve_teams="teams" in names,
    )

    def ready(bound: int) -> None:
        click.echo(f"simulator listening on http://127.0.0.1:{bound}")
        sys.stdout.flush()

    serve_forever(config, port, ready)
