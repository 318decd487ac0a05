"""Which faults a chaos run injects: one event = one fresh small run, one fault, then convergence.

Three scenarios, each on a deployment of its own (deployment.py):

- `local`: `trainyard serve` alone on SQLite with the local provider; the fault hits the serve.
- `lambda`: `serve` + 2 `trainyard worker`s on PostgreSQL, renting from the simulator; the fault
  hits whichever process holds the run's lease.
- `blackhole`: the same fleet; the sshd of one of the run's nodes is stopped (SIGSTOP) while it
  trains, so the lease owner's pass blocks on SSH past its lease.

Faults: `kill -9` (the process is restarted a moment later, on the same data dir and name) and
`SIGSTOP` (SIGCONT once another worker has taken the run over, or after a few seconds where no
other can). States (`inject.py` says how each is reached):

- pending, provisioning, bootstrapping, training, evaluating: the run's status;
- `launch window` (lambda): the provider took a launch and holds its answer (simulator fault
  `slow` on launch): the instance exists, nobody has recorded it;
- `no capacity` (lambda): capacity is 0 while the owner waits for it; the owner stops, another
  worker takes over, capacity comes back, then the first one comes back;
- `booting` (lambda): the instance is recorded and booting (the simulator's boot made 6 s, or
  the event's `boot_s`);
- `terminate window` (lambda): the provider took a terminate (billing ended) and holds its
  answer for 5 s (simulator fault `slow` on terminate): the database has not booked it;
- `ending` (local): the evaluation's result is on disk, the run not yet ended.

Every event expects the run to end `succeeded`: no fault here is one a run should not survive.

The full plan draws every moment at random (seeded by --seed). The CI subset fixes the moments
that decide what it checks (`hit_after_s`, `recover_after_s`, `boot_s`), so each of its runs
takes the same route: its boot kill is restarted while the instance still boots, so the
activation is watched and the cost must be exact (`exact_cost`), not merely never below the bill.
"""

from __future__ import annotations

from dataclasses import dataclass

KILL = "kill -9"
PAUSE = "SIGSTOP"
BLACKHOLE = "sshd SIGSTOP"
SCENARIOS = ("local", "lambda", "blackhole")


@dataclass(frozen=True)
class Event:
    scenario: str
    fault: str
    state: str
    nodes: int = 1
    expected: str = "succeeded"
    #: fixed timings (None: drawn at random, inject.py): from reaching the state to the fault;
    #: to the restart after a kill, or the SIGCONT after a SIGSTOP (inject.py says from when)
    hit_after_s: float | None = None
    recover_after_s: float | None = None
    #: the simulator's boot for a `booting` event (None: inject.SLOW_BOOT_S)
    boot_s: float | None = None
    #: the booked cost must equal the ledger: a conservative over-bill (verdict.py) fails it
    exact_cost: bool = False

    @property
    def label(self) -> str:
        return f"{self.scenario}: {self.fault} @ {self.state}" + (f" ({self.nodes} nodes)" if self.nodes > 1 else "")


def _events(scenario: str, *rows: tuple[str, str, int]) -> list[Event]:
    return [Event(scenario, fault, state, nodes) for fault, state, nodes in rows]


#: the full run (30 events), every state of every scenario at least once
PLAN: list[Event] = [
    *_events(
        "local",
        (KILL, "pending", 1),
        (KILL, "provisioning", 1),
        (PAUSE, "bootstrapping", 1),
        (KILL, "bootstrapping", 1),
        (KILL, "training", 1),
        (PAUSE, "training", 1),
        (KILL, "evaluating", 1),
        (KILL, "ending", 1),
    ),
    *_events(
        "lambda",
        (KILL, "launch window", 1),
        (PAUSE, "launch window", 2),
        (PAUSE, "no capacity", 1),
        (PAUSE, "no capacity", 2),
        (KILL, "no capacity", 1),
        (KILL, "booting", 1),
        (KILL, "booting", 2),
        (PAUSE, "booting", 1),
        (KILL, "bootstrapping", 2),
        (PAUSE, "bootstrapping", 1),
        (KILL, "training", 1),
        (PAUSE, "training", 2),
        (KILL, "training", 2),
        (KILL, "evaluating", 1),
        (PAUSE, "evaluating", 2),
        (KILL, "terminate window", 1),
        (KILL, "terminate window", 2),
        (PAUSE, "terminate window", 1),
        (PAUSE, "terminate window", 2),
    ),
    *_events("blackhole", (BLACKHOLE, "training", 1), (BLACKHOLE, "training", 2), (BLACKHOLE, "training", 2)),
]

#: the CI subset (tests/orchestrator/test_chaos.py): the issue's three regressions, and its
#: black-holed node. The boot kill is built to be watched: a 12 s boot, the owner killed 0.5 s
#: after the instance is recorded and restarted 0.5 s later, so the restart (or, were it slow,
#: another worker once the heartbeat expires, 6 s) polls it while it still boots; its cost must
#: be exact. The black hole's sshd gets SIGCONT 2 s after another worker took the run over.
CI_EVENTS: list[Event] = [
    Event("lambda", KILL, "terminate window", 1, exact_cost=True),
    Event("lambda", PAUSE, "no capacity", 1, exact_cost=True),
    Event("lambda", KILL, "booting", 1, hit_after_s=0.5, recover_after_s=0.5, boot_s=12.0, exact_cost=True),
    Event("blackhole", BLACKHOLE, "training", 1, hit_after_s=0.0, recover_after_s=2.0),
]


def choose(count: int, only: str | None = None) -> list[Event]:
    """`count` events of the plan (those matching `only`: comma-separated scenarios or texts of
    labels, any of them), spread evenly over it, so a short run still meets every scenario; past
    the plan's length it starts over. Grouped by scenario, in plan order, so each deployment is
    started once."""
    wanted = [w.strip() for w in (only or "").split(",") if w.strip()]
    pool = [e for e in PLAN if not wanted or any(w == e.scenario or w in e.label for w in wanted)]
    if not pool:
        raise SystemExit(f"no event of the plan matches {only!r}")
    picked = [pool[(i * len(pool)) // count if count <= len(pool) else i % len(pool)] for i in range(count)]
    return sorted(picked, key=lambda e: SCENARIOS.index(e.scenario))
