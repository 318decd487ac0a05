"""The simulator's billing ledger: what Lambda would charge for each instance.

Lambda's rule (docs, 2024-2026): instances are priced by the hour and billed in one-minute
increments, from when the instance is up (passes health checks: here, `booting` -> `active`) until
it is terminated (here, the terminate call). Whether a partial minute is charged is not
documented; the simulator charges every started minute, the conservative reading.

`minute_s` is the length of a billing minute in real seconds: 60 by default, small in tests so
that a "ten-minute" run takes a second. The ledger is written to `ledger.json` in the state
directory after every change, so it survives the simulator and can be read by hand.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from provision.state_files import read_json, write_json


@dataclass
class LedgerEntry:
    instance_id: str
    name: str | None
    instance_type: str
    region: str
    price_cents_per_hour: int
    started_at: float  # unix seconds: the instance became active
    ended_at: float | None = None  # unix seconds: terminate call (None while billing runs)


def billed_minutes(seconds: float, minute_s: float) -> int:
    """Started minutes in `seconds` of uptime (0 for none)."""
    if seconds <= 0:
        return 0
    # the epsilon keeps float noise (60.0000000001 s) from charging a whole extra minute
    return math.ceil(seconds / minute_s - 1e-9)


def cost_cents(price_cents_per_hour: int, minutes: int) -> Decimal:
    """Exact cost in cents: the hourly price spread over 60 one-minute increments."""
    return Decimal(price_cents_per_hour) * minutes / 60


class Ledger:
    """Billing records, one per instance that ever became active. Thread-safe."""

    def __init__(self, path: Path | None, *, minute_s: float = 60.0):
        self.path = path
        self.minute_s = minute_s
        self._entries: dict[str, LedgerEntry] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        """Keep the entries of an earlier run of the simulator on the same state directory.

        An entry still open in the file belongs to a simulator that died without stopping its
        machines; it is closed at the file's last write, the last moment known to be billed.
        """
        last_write = path.stat().st_mtime
        for raw in read_json(path, {}).get("entries", []):
            entry = LedgerEntry(**raw)
            if entry.ended_at is None:
                entry.ended_at = max(entry.started_at, last_write)
            self._entries[entry.instance_id] = entry

    def start(
        self,
        *,
        instance_id: str,
        name: str | None,
        instance_type: str,
        region: str,
        price_cents_per_hour: int,
        at: float,
    ) -> None:
        with self._lock:
            self._entries[instance_id] = LedgerEntry(
                instance_id, name, instance_type, region, price_cents_per_hour, started_at=at
            )
            self._save()

    def stop(self, instance_id: str, *, at: float) -> None:
        """End billing for an instance (no-op if it never started or already ended)."""
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is not None and entry.ended_at is None:
                entry.ended_at = max(at, entry.started_at)
                self._save()

    def snapshot(self, now: float) -> dict[str, Any]:
        """Every entry with its billed minutes and cost so far, and the total."""
        with self._lock:
            rows = [self._row(e, now) for e in self._entries.values()]
        total = sum((Decimal(r["cost_cents"]) for r in rows), Decimal(0))
        return {
            "minute_seconds": self.minute_s,
            "rule": "price_cents_per_hour / 60 per started minute, from active until terminate",
            "entries": rows,
            "total_cost_cents": str(total),
            "total_cost_usd": str((total / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)),
        }

    def _row(self, entry: LedgerEntry, now: float) -> dict[str, Any]:
        end = entry.ended_at if entry.ended_at is not None else now
        minutes = billed_minutes(end - entry.started_at, self.minute_s)
        cents = cost_cents(entry.price_cents_per_hour, minutes)
        row = asdict(entry)
        row.update(
            running=entry.ended_at is None,
            billed_minutes=minutes,
            cost_cents=str(cents.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)),
        )
        return row

    def _save(self) -> None:
        if self.path is not None:
            write_json(
                self.path, {"minute_seconds": self.minute_s, "entries": [asdict(e) for e in self._entries.values()]}
            )
