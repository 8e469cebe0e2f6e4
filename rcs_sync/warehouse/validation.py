"""Record validation rules, compiled from a stream declaration into SQL expressions.

Records are staged by DuckDB with every documented field typed `JSON`, so one parse of
the body yields each field's JSON text. Typed values are derived from that text with
cheap string operations (re-parsing JSON per field costs more than the whole read),
and a record is valid when every present field produced a typed value that meets its
rule. Detailed reasons are only computed for the records that fail.

The functions here are pure: they build SQL text from the declaration.
"""

from __future__ import annotations

from rcs_sync.model.streams import Field

TYPED_PREFIX = "_v_"
"""Typed values are projected beside the JSON columns under this prefix."""


def quote(name: str) -> str:
    """Quote an identifier (field names may come from provider data: escape them)."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def typed(name: str) -> str:
    return quote(TYPED_PREFIX + name)


def _string_value(text: str) -> str:
    """The value of a JSON string; only strings with escapes pay for a JSON parse."""
    return (
        f"CASE WHEN {text}[1] = '\"' THEN "
        f"CASE WHEN contains({text}, '\\') THEN json_extract_string({text}, '$') "
        f"ELSE substr({text}, 2, length({text}) - 2) END END"
    )


def value_expr(field: Field) -> str:
    """The typed value of a staged JSON field, NULL when the JSON is of the wrong kind.

    A JSON `1.5` or `1e3` is not an integer, although DuckDB's cast would round it.
    Integers are cast straight to the declared type, so a value it cannot hold (state
    -1 in a UTINYINT) is a bad record, not a failed cast that sinks the whole batch.
    """
    text = f"({quote(field.name)}::VARCHAR)"
    if field.kind == "integer":
        return (
            f"CASE WHEN contains({text}, '.') OR contains({text}, 'e') OR contains({text}, 'E') "
            f"THEN NULL ELSE TRY_CAST({text} AS {field.sql_type}) END"
        )
    if field.kind == "timestamp":
        return f"TRY_CAST({_string_value(text)} AS TIMESTAMPTZ)"
    return _string_value(text)


def _wrong_kind(field: Field) -> str:
    """Why a present value produced no typed value (evaluated for failing records only)."""
    col = quote(field.name)
    if field.kind == "integer":
        return (
            f"CASE WHEN json_type({col}) IN ('UBIGINT', 'BIGINT') "
            f"THEN {literal(field.name + ': out of range')} "
            f"ELSE {literal(field.name + ': not an integer')} END"
        )
    if field.kind == "timestamp":
        return (
            f"CASE WHEN json_type({col}) = 'VARCHAR' "
            f"THEN {literal(field.name + ': not a valid timestamp')} "
            f"ELSE {literal(field.name + ': not a string')} END"
        )
    return literal(field.name + ": not a string")


def _checks(field: Field) -> list[tuple[str, str]]:
    """(condition that makes the record bad, SQL for the reason) pairs, tried in order."""
    col, value = quote(field.name), typed(field.name)
    checks: list[tuple[str, str]] = []
    if field.required:
        checks.append((f"{col} IS NULL", literal(f"{field.name}: missing")))
    checks.append((f"{col} IS NOT NULL AND {value} IS NULL", _wrong_kind(field)))
    if field.minimum is not None:
        checks.append(
            (f"{value} < {field.minimum}", literal(f"{field.name}: below {field.minimum}"))
        )
    if field.allowed is not None:
        allowed = ", ".join(literal(v) if isinstance(v, str) else str(v) for v in field.allowed)
        checks.append((f"{value} NOT IN ({allowed})", literal(f"{field.name}: unknown value")))
    return checks


def reason_expr(fields: tuple[Field, ...]) -> str:
    """A CASE expression naming the first rule a staged record breaks, else NULL."""
    whens = [
        f"WHEN {condition} THEN {reason}"
        for field in fields
        for condition, reason in _checks(field)
    ]
    return "CASE " + " ".join(whens) + " END"


def staging_columns(names: tuple[str, ...]) -> str:
    """The `columns={...}` struct for read_json: every field typed JSON."""
    return "{" + ", ".join(f"{literal(n)}: 'JSON'" for n in names) + "}"


def raw_expr(names: tuple[str, ...], replace: dict[str, str] | None = None) -> str:
    """Rebuild a record's JSON from its staged fields, for the quarantine table;
    `replace` gives other SQL for some fields (personal data is never kept raw)."""
    replace = replace or {}
    pairs = ", ".join(f"{literal(n)}, {replace.get(n, quote(n))}" for n in names)
    return f"json_object({pairs})"
