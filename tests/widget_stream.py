"""A stream the product does not ship, declared by the tests alone: widgets.

It differs from RCS where a declaration can: its key is `serial` (an INTEGER), its
state `phase` takes the values 7, 8 and 9 with meanings of its own, and its time field
is `made`. `ENDPOINT` is the simulator's own description of the same endpoint (the
simulator knows nothing of rcs_sync). Importing this module registers nothing, so the
test process keeps the product's registry; `PROGRAM ARGS` (this file run as a script)
registers the declaration, then runs `rcs-sync ARGS` exactly as the installed script
does: that is how the end-to-end tests sync it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import MappingProxyType

from rcs_sim.endpoints import Endpoint
from rcs_sync.__main__ import main as rcs_sync
from rcs_sync.model.streams import Field, History, Stream, register

WIDGETS = Stream(
    name="test_widget_records",
    path="/j/test_widget_records",
    table="test_widgets",
    quarantine_table="test_widget_quarantine",
    key="serial",
    fields=(
        Field("serial", "integer", "INTEGER", required=True, minimum=1),
        Field("colour", "string", "VARCHAR"),
        Field("grams", "integer", "USMALLINT"),
        Field("phase", "integer", "UTINYINT", required=True, allowed=(7, 8, 9)),
        Field("made", "timestamp", "TIMESTAMPTZ", required=True),
    ),
    precedence="phase",
    history=History(
        "test_widget_phases",
        state="phase",
        initial=7,
        time="made",
        meanings=MappingProxyType({7: "drafted", 8: "built", 9: "scrapped"}),
    ),
)

ENDPOINT = Endpoint(
    path=WIDGETS.path,
    key="serial",
    time="made",
    state="phase",
    states=(7, 8, 9),
    fields=(("colour", "string"), ("grams", "integer")),
    records=3_000,
    days=10.0,
)

PROGRAM = (sys.executable, str(Path(__file__).resolve()))
"""The command line of `rcs-sync` with the widget stream registered."""


def main() -> None:
    register(WIDGETS)
    rcs_sync()


if __name__ == "__main__":
    main()
