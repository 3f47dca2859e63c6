"""Prints the fault suite's figures (`build/test-artifacts/faults.json`) as one table.

    python3 -m tests.integration.faults_table

Each row was written by a case of `tests/integration/test_faults.py` after its assertions held.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "faults.json"
COLUMNS = [
    ("fault", "fault"),
    ("in", "records_in"),
    ("out", "out"),
    ("quarantined", "quarantined"),
    ("duplicates", "duplicates"),
    ("lost", "lost"),
    ("lineage rows", "lineage_rows"),
    ("confirmed", "lineage_confirmed"),
    ("messages", "messages"),
    ("verify", "verify"),
]


def record(case: str, figures: dict[str, Any]) -> None:
    """Adds (or replaces) one case's figures in the JSON file."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    document = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    document[case] = figures
    FIGURES.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def lineage_figures(store_url: str) -> dict[str, Any]:
    """A case's lineage columns, from its store: hop rows, confirmed deliveries, `verify`."""
    from lineage_guard.lineage.hops import Delivery
    from lineage_guard.lineage.store import open_store

    with open_store(store_url, create=False) as store:
        hops = list(store.scan())
        verified = store.verify()
    assert verified.ok, verified.broken
    return {
        "lineage_rows": len(hops),
        "lineage_confirmed": sum(h.delivery is Delivery.CONFIRMED for h in hops),
        "verify": f"ok ({verified.batches} batches, {verified.hops} hops)",
    }


def table(document: dict[str, dict[str, Any]]) -> str:
    rows = [[str(figures.get(key, "")) for _, key in COLUMNS] for figures in document.values()]
    widths = [max(len(title), *(len(r[i]) for r in rows)) for i, (title, _) in enumerate(COLUMNS)]
    lines = [" | ".join(title.ljust(w) for (title, _), w in zip(COLUMNS, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("")
    for case, figures in document.items():
        lines.append(f"{figures.get('fault', case)}: {figures.get('command', '')}")
        if figures.get("notes"):
            lines.append(f"    {figures['notes']}")
    return "\n".join(lines)


def main() -> None:
    if not FIGURES.exists():
        sys.exit(f"no figures at {FIGURES}: run `pytest tests/integration/test_faults.py` first")
    print(table(json.loads(FIGURES.read_text())))


if __name__ == "__main__":
    main()
