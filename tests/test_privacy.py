"""Phone-number privacy: the SQL transforms, and a warehouse that never holds a raw number."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
import requests

from rcs_sync.warehouse.privacy import Privacy
from tests.conftest import TOKEN, Site


def transform(privacy: Privacy, numbers: list[str | None]) -> list[str | None]:
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT {privacy.sql('n')} FROM unnest(?) AS t(n)", [numbers]
        ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("key", [b"k", b"secret-key-123", b"x" * 64, b"y" * 200])
def test_hash_is_rfc_2104_hmac_sha256(key: bytes) -> None:
    numbers = ["+33612345678", "+14155550123", "+351912345678"]
    expected = [hmac.new(key, n.encode(), hashlib.sha256).hexdigest() for n in numbers]
    assert transform(Privacy("hash", key), [*numbers, None]) == [*expected, None]


def test_mask_keeps_the_country_code_and_the_last_two_digits() -> None:
    got = transform(
        Privacy("mask"),
        ["+33612345678", "+14155550123", "+351912345678", "+7 912 345 67 89", None],
    )
    assert got == ["+33*******78", "+1********23", "+351*******78", "+7********89", None]


def test_hash_needs_a_key() -> None:
    with pytest.raises(ValueError, match="secret key"):
        Privacy("hash")


def test_with_hash_no_raw_number_is_anywhere_in_the_database_file(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    s = site(records=3_000, bad_fraction=0.03)
    key_file = tmp_path / "number_key"
    key_file.write_text("a-long-random-secret\n")
    key_file.chmod(0o600)
    s.write_config(warehouse={"number": "hash", "number_key_file": str(key_file)})
    s.ok("sync")
    s.sim.sim.advance(120)
    s.sim.sim.mutate(50)
    s.ok("sync")
    s.assert_converged()

    now = s.sim.sim.now()
    served = requests.get(
        f"{s.sim.base_url}/j/rcs_records",
        params={
            "start": "2000-01-01T00:00:00Z",
            "end": (now.replace(year=now.year + 1)).isoformat(),
        },
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ).json()
    numbers = {r["number"] for r in served if isinstance(r.get("number"), str)}
    assert len(numbers) > 100
    stored = dict(s.query("SELECT id, number FROM rcs_records"))
    by_id = {r["id"]: r["number"] for r in served if isinstance(r.get("id"), int)}
    sample = next(i for i in stored if isinstance(by_id.get(i), str))
    assert (
        stored[sample]
        == hmac.new(b"a-long-random-secret", by_id[sample].encode(), hashlib.sha256).hexdigest()
    )
    assert s.query("SELECT count(*) FROM rcs_quarantine") != [(0,)]
    files = [p for p in s.dir.iterdir() if p.is_file() and p.name.startswith("rcs.")]
    content = b"".join(p.read_bytes() for p in files)
    leaked = raw_numbers_in(content, {n.lstrip("+").encode() for n in numbers})
    assert not leaked, f"{len(leaked)} raw numbers in the database file, e.g. {leaked[:3]}"


def raw_numbers_in(content: bytes, numbers: set[bytes]) -> list[bytes]:
    """The numbers (digits only: a `+`-prefixed copy holds them too) found in `content`:
    each is inside a run of digits, so only those runs are searched, at every offset,
    not the whole content once per number (6,000 numbers in a 6 MB file: 11 s)."""
    lengths = {len(n) for n in numbers}
    found: set[bytes] = set()
    for run in re.findall(rb"[0-9]{%d,}" % min(lengths), content):
        for size in lengths:
            found.update(run[i : i + size] for i in range(len(run) - size + 1))
    return sorted(found & numbers)


def test_raw_numbers_are_found_wherever_their_digits_lie() -> None:
    numbers = {b"15550001111", b"15550002222", b"15550003333"}
    content = b"\x00+15550001111\x0193155500022229\xff1555000333"
    assert raw_numbers_in(content, numbers) == [b"15550001111", b"15550002222"]
