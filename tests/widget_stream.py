"""A stream the product does not ship, declared by the tests alone: widgets.

It differs from RCS where a declaration can: its key is `serial` (an INTEGER), its
state `phase` takes the values 7, 8 and 9 with meanings of its own, and its time field
is `made`. Importing this module registers nothing, so the test process keeps the
product's registry; `python -m tests.widget_stream ARGS` registers the declaration and
runs `rcs-sync ARGS`, which is how end-to-end tests sync it.
"""

from __future__ import annotations

from types import MappingProxyType

from rcs_sync.model.streams import Field, History, Stream

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
