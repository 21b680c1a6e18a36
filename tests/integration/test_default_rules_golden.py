"""The default rule set is a declaration now; it must merge exactly as the hand-written SQL did.

``tests/data/golden_default_rules.json`` was recorded from the hand-written merge (see
``golden.py``); the declared default must reproduce every frame's hash, stats and delta count,
every entity version byte for byte, and the same quarantined items. The corpus's frame hashes
were recorded the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamcatcher_pg.ingest import ingest_directory
from tests.support.golden import fingerprint, load_and_merge
from tests.support.helpers import connection

DATA = Path(__file__).resolve().parents[1] / "data"

#: The corpus's frame hashes under the hand-written merge.
CORPUS_HASHES = {
    10: "050581436b499309",
    108: "45933d37dfeafae7",
    138: "abee55ad8a92806a",
    500: "8b80f07b68789b23",
    520: "7ba04c00dd727fbb",
}


async def test_default_rules_reproduce_the_hand_written_merge(dreamcatcher_dsn: str) -> None:
    expected = json.loads((DATA / "golden_default_rules.json").read_text())
    async with connection(dreamcatcher_dsn) as conn:
        await load_and_merge(conn)
        got = await fingerprint(conn)
    assert got["frames"] == expected["frames"]
    assert (got["versions"], got["versions_sha256"]) == (expected["versions"], expected["versions_sha256"])
    assert (got["quarantined"], got["quarantine_sha256"]) == (
        expected["quarantined"],
        expected["quarantine_sha256"],
    )


async def test_corpus_frame_hashes_are_unchanged(dreamcatcher_dsn: str) -> None:
    report = await ingest_directory(dreamcatcher_dsn, DATA / "corpus", "corpus", timeout=10)
    assert report.ok
    async with connection(dreamcatcher_dsn) as conn:
        rows = await conn.fetch("SELECT frame, state_hash FROM dreamcatcher.frames WHERE world = 'corpus'")
    assert {r["frame"]: r["state_hash"] for r in rows} == CORPUS_HASHES
