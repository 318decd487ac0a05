"""What an event left behind, read from the database and from the provider's own records.

Converged: the run ended (a terminal status, its lease released, every instance row confirmed
terminated) AND the provider shows nothing of it still running (the simulator: no instance of the
run booting, active or unhealthy; the local provider: no process in its directories). The time to
converge runs from the fault to the first moment both held.

Then, for the run:
- launches per rank: the simulator's instances and ledger entries named `ty-<run>-<rank>`
  (a replacement `ty-<run>-<rank>r<n>` counts for its rank); the local provider's instance
  directories. More than one is a double launch (no fault here loses a node);
- orphans: what the provider still runs for the run once the database says it ended;
- booked cost (the run's instance and orphan cost entries) against the simulator's ledger for
  every instance named after the run, both to the cent (0.01 ¢ as the e2e tests compare), with
  one of three verdicts (`judge_cost`):
  - `exact`: booked == ledger;
  - `conservative`: booked over the ledger, each instance over it by at most one billing
    increment and only where the database shows nobody watched it turn active: its booked
    `active_at` equals its `booting_seen_at` (the controller then books the boot from its last
    sighting booting, by design never below the bill, so up to one increment over it when the
    unwatched part of the boot crosses an increment's boundary). Passes, and says so;
  - `MISMATCH`: anything else, under the ledger at all or over it unexplained. Fails.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import select

from benchmarks.chaos.deployment import Deployment, LambdaFleet, LocalServe
from benchmarks.chaos.plan import Event
from orchestrator.db.models import CostEntry, Instance, Run, RunEvent, RunStatus, aware
from orchestrator_helpers import kill_processes_mentioning, processes_mentioning

#: the simulator's statuses that bill or may yet (terminating: billing has ended)
LIVE = ("booting", "active", "unhealthy")
#: how long the provider is given to agree once the database says the run ended
PROVIDER_GRACE_S = 15.0
#: the cost verdicts (see the module doc)
EXACT, CONSERVATIVE, MISMATCH = "exact", "conservative", "MISMATCH"


def rank_of(run_id: str, name: str | None) -> int | None:
    match = re.fullmatch(rf"ty-{re.escape(run_id)}-(\d+)(?:r\d+)?", name or "")
    return int(match.group(1)) if match else None


def cents(value: Decimal | float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass
class Outcome:
    event: Event
    run_id: str | None = None
    state_hit: str = ""
    target: str = ""
    final: str = ""
    reason: str = ""
    #: unix time of the fault (None: not injected)
    fault_at: float | None = None
    converged: bool = False
    converge_s: float | None = None
    launches: dict[int, int] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    booked_cents: Decimal | None = None
    #: None where the provider bills nothing (local)
    ledger_cents: Decimal | None = None
    #: EXACT, CONSERVATIVE or MISMATCH, with a line per instance that made it so (None: unmeasured)
    cost_verdict: str | None = None
    cost_lines: list[str] = field(default_factory=list)
    #: the run's instances booked from their last sighting booting (nobody watched them turn active)
    unwatched: list[str] = field(default_factory=list)
    #: the process that held the run's lease once it moved off the one hit (None: not seen moving)
    takeover: str | None = None
    notes: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def double_launch(self) -> bool:
        return any(n > 1 for n in self.launches.values())

    @property
    def cost_mismatch(self) -> bool:
        """The cost verdict is MISMATCH, or CONSERVATIVE where the event demands it exact (False
        while unmeasured: `ok` requires a measurement)."""
        return self.cost_verdict == MISMATCH or (self.event.exact_cost and self.cost_verdict == CONSERVATIVE)

    @property
    def ok(self) -> bool:
        """Converged to the expected state, one launch per rank, nothing left, cost exact (or a
        conservative over-bill, unless the event demands exact)."""
        return (
            self.error is None
            and self.cost_verdict is not None
            and self.converged
            and self.final == self.event.expected
            and not self.double_launch
            and not self.orphans
            and not self.cost_mismatch
        )

    def failures(self) -> list[str]:
        out = []
        if self.error:
            out.append(f"harness error: {self.error}")
        if not self.converged:
            out.append("did not converge")
        if self.final != self.event.expected:
            out.append(f"ended {self.final or '?'}, expected {self.event.expected}")
        if self.double_launch:
            out.append("double launch")
        if self.orphans:
            out.append(f"{len(self.orphans)} orphan(s)")
        if self.cost_verdict == MISMATCH:
            out.append("cost != ledger")
        elif self.cost_mismatch:
            out.append("cost over the ledger (conservative), where exact is demanded")
        return out


# -- the cost verdict ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Billed:
    """One instance row of the run: what the database booked for it and what the provider billed."""

    name: str
    booked: Decimal
    booked_minutes: float
    ledger: Decimal
    ledger_minutes: int
    #: one billing increment's cost (price_cents_per_hour / 60)
    increment: Decimal
    #: its booked active_at equals its booting_seen_at: nobody watched it turn active, so its boot
    #: was booked from its last sighting booting; when that was
    unwatched_since: datetime | None


def judge_cost(rows: list[Billed], booked_total: Decimal, ledger_total: Decimal) -> tuple[str, list[str]]:
    """The cost verdict (module doc) and a line per instance that is not exact. The totals hold
    what no row accounts for as well (cost entries of no recorded instance, ledger entries of
    instances never recorded): that part must match exactly."""
    if cents(booked_total) == cents(ledger_total):
        return EXACT, []
    lines, unexplained = [], []
    for row in rows:
        over = cents(row.booked - row.ledger)  # rounded once: 0.67 - 0.33 is one 0.33 increment
        if over == 0:
            continue
        what = (
            f"{row.name}: booked {row.booked_minutes:g} min {cents(row.booked)} c, "
            f"ledger {row.ledger_minutes} min {cents(row.ledger)} c ({over:+} c)"
        )
        if over < 0:
            unexplained.append(what + ": under the bill")
        elif row.unwatched_since is None:
            unexplained.append(what + ": over the bill, its activation watched")
        elif over > cents(row.increment):
            unexplained.append(what + ": over the bill by more than one increment")
        else:
            lines.append(what + f": unwatched boot, booked from its last sighting booting {_t(row.unwatched_since)}")
    rest = (booked_total - sum((r.booked for r in rows), Decimal(0))) - (
        ledger_total - sum((r.ledger for r in rows), Decimal(0))
    )
    if cents(rest) != 0:
        unexplained.append(f"booked {rest:+.2f} c more than the ledger beyond what the instance rows account for")
    if cents(booked_total) < cents(ledger_total) or unexplained or not lines:
        return MISMATCH, unexplained or [f"booked {cents(booked_total)} c, ledger {cents(ledger_total)} c"]
    return CONSERVATIVE, lines


# -- the provider's side ---------------------------------------------------------------------------
def sim_instances(fleet: LambdaFleet, run_id: str) -> list:
    """The simulator's instances named after the run (terminated ones linger for 10 minutes)."""
    cloud = fleet.sim.cloud
    with cloud.lock:
        return [i for i in cloud.instances.values() if rank_of(run_id, i.name) is not None]


def ledger_entries(fleet: LambdaFleet, run_id: str) -> list[dict]:
    rows = fleet.sim.cloud.ledger.snapshot(time.time())["entries"]
    return [e for e in rows if rank_of(run_id, e["name"]) is not None]


def local_processes(local: LocalServe, run_id: str) -> list[tuple[int, str]]:
    return processes_mentioning(str(local.runs_dir / f"ty-{run_id}-"))


def provider_live(deployment: Deployment, run_id: str) -> list[str]:
    """What the provider still runs for the run: instance names (status), or local processes."""
    if isinstance(deployment, LambdaFleet):
        return [f"{i.name} ({i.status})" for i in sim_instances(deployment, run_id) if i.status in LIVE]
    assert isinstance(deployment, LocalServe)
    return [f"pid {pid}: {cmd[:80]}" for pid, cmd in local_processes(deployment, run_id)]


# -- the database's side ---------------------------------------------------------------------------
def db_ended(deployment: Deployment, run_id: str) -> bool:
    """Terminal, the lease released, every instance row confirmed terminated."""
    with deployment.db() as s:
        run = s.get(Run, run_id)
        if run is None or not RunStatus(run.status).is_terminal or run.lease_token is not None:
            return False
        open_rows = s.scalar(
            select(Instance.id).where(Instance.run_id == run_id, Instance.terminated_at.is_(None)).limit(1)
        )
        return open_rows is None


def converge(deployment: Deployment, run_id: str, since: float, timeout_s: float) -> tuple[bool, float | None]:
    """Wait until the run converged (see the module doc); (converged, seconds since `since`).
    Gives up `timeout_s` after `since`, or PROVIDER_GRACE_S after the database says it ended
    while the provider still runs something of it (an orphan: nothing will end it)."""
    db_done_at = None
    while True:
        now = time.time()
        if db_ended(deployment, run_id):
            db_done_at = db_done_at or now
            if not provider_live(deployment, run_id):
                return True, now - since
            if now - db_done_at > PROVIDER_GRACE_S:
                return False, None
        if now - since > timeout_s:
            return False, None
        time.sleep(0.2)


def measure(deployment: Deployment, out: Outcome) -> None:
    """Fill in `out` for its run (final state, launches, orphans, cost, and evidence on failure)."""
    run_id = out.run_id
    assert run_id is not None
    run = deployment.run(run_id)
    out.final, out.reason = run.status, run.status_reason or ""
    with deployment.db() as s:
        booked = s.execute(
            select(CostEntry.instance_id, CostEntry.cents, CostEntry.quantity).where(
                CostEntry.run_id == run_id, CostEntry.kind.in_(("instance", "orphan"))
            )
        ).all()
        rows = s.scalars(select(Instance).where(Instance.run_id == run_id).order_by(Instance.id)).all()
        events = s.execute(
            select(RunEvent.time, RunEvent.kind, RunEvent.message)
            .where(RunEvent.run_id == run_id)
            .order_by(RunEvent.id)
        ).all()
    out.booked_cents = sum((Decimal(str(c)) for _i, c, _q in booked), Decimal(0))
    out.unwatched = [r.name for r in rows if _unwatched_since(r) is not None]
    if out.fault_at is not None:
        fault = datetime.fromtimestamp(out.fault_at, timezone.utc)
        takers = [
            f"{message.split()[1]} ({(aware(t) - fault).total_seconds():+.1f} s)"
            for t, kind, message in events
            if kind == "worker" and aware(t) > fault - timedelta(seconds=1)
        ]
        out.notes.append("taken after the fault by " + (", ".join(takers) or "nobody new"))
    nodes = out.event.nodes
    out.launches = {rank: 0 for rank in range(nodes)}
    out.orphans = provider_live(deployment, run_id)
    if isinstance(deployment, LambdaFleet):
        insts = sim_instances(deployment, run_id)
        ledger = ledger_entries(deployment, run_id)
        names = {i.id: i.name for i in insts} | {e["instance_id"]: e["name"] for e in ledger}
        for rank, n in Counter(rank_of(run_id, name) for name in names.values()).items():
            if rank is not None:
                out.launches[rank] = n
        out.ledger_cents = sum((Decimal(e["cost_cents"]) for e in ledger), Decimal(0))
        by_instance = {e["instance_id"]: e for e in ledger}
        billed = [_billed(r, booked, by_instance.get(r.provider_instance_id)) for r in rows]
        out.cost_verdict, out.cost_lines = judge_cost(billed, out.booked_cents, out.ledger_cents)
        recorded = {r.provider_instance_id for r in rows}
        unrecorded = [f"{name} ({iid[:8]})" for iid, name in names.items() if iid not in recorded]
        if unrecorded:
            out.notes.append("never recorded: " + ", ".join(unrecorded))
        provider_view = [
            f"sim {i.name} {i.id[:8]} {i.status} launched {time.strftime('%H:%M:%S', time.localtime(i.launched_at))}"
            for i in insts
        ] + [
            f"ledger {e['name']} {e['instance_id'][:8]} {e['billed_minutes']} min {cents(Decimal(e['cost_cents']))} c"
            f"{' (still billing)' if e['running'] else ''}"
            for e in ledger
        ]
    else:
        assert isinstance(deployment, LocalServe)
        for path in deployment.runs_dir.glob(f"ty-{run_id}-*"):
            rank = rank_of(run_id, path.name)
            if rank is not None and path.is_dir():
                out.launches[rank] = out.launches.get(rank, 0) + 1
        provider_view = [f"dir {p.name}" for p in sorted(deployment.runs_dir.glob(f"ty-{run_id}-*"))]
        out.cost_verdict, out.cost_lines = judge_cost([], out.booked_cents, Decimal(0))  # books nothing
    if out.cost_verdict == CONSERVATIVE:
        out.notes.append("conservative over-bill (unwatched boot, by design): " + "; ".join(out.cost_lines))
    elif out.unwatched:
        out.notes.append("booked from the last sighting booting (unwatched boot), exact: " + ", ".join(out.unwatched))
    if not out.ok or out.cost_verdict != EXACT:
        out.evidence = [
            *(
                f"db {r.name} {(r.provider_instance_id or '-')[:8]} {r.status} booting seen {_t(r.booting_seen_at)} "
                f"active {_t(r.active_at)} terminate asked {_t(r.terminate_requested_at)} "
                f"terminated {_t(r.terminated_at)}"
                for r in rows
            ),
            *provider_view,
            f"booked {out.booked_cents} c in {len(booked)} entr{'y' if len(booked) == 1 else 'ies'}",
            *(f"cost {out.cost_verdict}: {line}" for line in out.cost_lines),
            *(f"event {_t(t)} {kind}: {message[:160]}" for t, kind, message in events[-25:]),
        ]


def _unwatched_since(row: Instance) -> datetime | None:
    """When the row's boot is booked from, where nobody watched it turn active: its booked
    active_at is its last sighting booting (controller: costs.active_since, watched=False)."""
    if row.active_at is None or row.booting_seen_at is None:
        return None
    return aware(row.active_at) if aware(row.active_at) == aware(row.booting_seen_at) else None


def _billed(row: Instance, booked: Sequence[Any], entry: dict | None) -> Billed:
    """A row's booked cost (its cost entries: instance id, cents, minutes) and its ledger entry."""
    mine = [(c, q) for instance_id, c, q in booked if instance_id == row.id]
    return Billed(
        name=row.name,
        booked=sum((Decimal(str(c)) for c, _q in mine), Decimal(0)),
        booked_minutes=sum(q or 0 for _c, q in mine),
        ledger=Decimal(entry["cost_cents"]) if entry else Decimal(0),
        ledger_minutes=entry["billed_minutes"] if entry else 0,
        increment=Decimal(row.price_cents_per_hour) / 60,
        unwatched_since=_unwatched_since(row),
    )


def _t(value: object) -> str:
    return value.strftime("%H:%M:%S.%f")[:-4] if hasattr(value, "strftime") else "-"


def clean_up(deployment: Deployment, run_id: str) -> list[str]:
    """After an event: terminate what the provider still runs of the run (the simulator's
    instances; the local provider's processes), so the next event starts from nothing."""
    done = []
    if isinstance(deployment, LambdaFleet):
        live = [i.id for i in sim_instances(deployment, run_id) if i.status in LIVE]
        if live:
            deployment.sim.cloud.terminate(live)
            done.append(f"harness terminated {len(live)} instance(s) the run left")
    elif isinstance(deployment, LocalServe):
        left = local_processes(deployment, run_id)
        if left:
            kill_processes_mentioning(str(deployment.runs_dir / f"ty-{run_id}-"))
            done.append(f"harness killed {len(left)} process(es) the run left")
    return done
