"""The chaos harness's CI subset (issue 14; benchmarks/chaos/): four faults from its plan, run by
the harness's own code on a real fleet (`trainyard serve` + 2 `trainyard worker` processes on a
fresh PostgreSQL database, renting from the Lambda simulator), each on a fresh one-node run, at
fixed moments (plan.CI_EVENTS) so each takes the same route every time:

- kill -9 of the lease owner in the terminate window (the simulator took the terminate and ended
  billing, its answer held 5 s): the next owner finishes the same ending;
- SIGSTOP of the lease owner while it waits for capacity, another worker takes the run over,
  capacity comes back, then the paused one resumes: it must not launch a second instance;
- kill -9 of the lease owner 0.5 s after its instance is recorded booting (a 12 s boot), restarted
  0.5 s later: the restart watches the instance turn active, so the cost equals the ledger exactly;
- a black-holed node: its sshd SIGSTOPped while the run trains, so the owner's pass blocks on SSH
  past its lease; another worker takes the run over; sshd resumes 2 s later.

Each must converge to `succeeded` with exactly one instance per rank and nothing left running.
Cost: the first three exactly the simulator's ledger to the cent; the black hole exactly, or over
it by the controller's by-design conservative rule (verdict.py: an unwatched boot booked from its
last sighting booting), which no boot in that event should need. Slow-ish: 30-50 s each.
"""

from __future__ import annotations

import random
import sys

import pytest

from orchestrator_helpers import REPO

sys.path.insert(0, str(REPO))  # benchmarks/ is no installed package

from benchmarks.chaos.deployment import LambdaFleet
from benchmarks.chaos.inject import EventRunner
from benchmarks.chaos.plan import BLACKHOLE, CI_EVENTS, Event
from benchmarks.chaos.report import progress_line
from benchmarks.chaos.verdict import CONSERVATIVE, EXACT

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def runner(lsim, pg_server_url, tmp_path_factory):
    fleet = LambdaFleet(lsim, tmp_path_factory.mktemp("chaos"), pg_server_url())
    yield EventRunner(fleet, random.Random(14), converge_timeout_s=150)
    fleet.close()


@pytest.mark.parametrize("event", CI_EVENTS, ids=lambda e: f"{e.fault}@{e.state}".replace(" ", "_"))
def test_a_fault_from_the_chaos_plan_converges_exactly_once_and_billed_to_the_cent(runner, event: Event):
    out = runner.run(event)
    summary = progress_line(1, 1, out) + "\n" + "\n".join(out.notes + out.evidence)
    print(summary)  # what the event did, shown with -rP
    assert out.error is None, summary
    assert out.converged and out.final == "succeeded", summary
    assert out.launches == {0: 1}, summary
    assert out.orphans == [], summary
    assert out.booked_cents is not None and out.ledger_cents is not None, summary
    if event.exact_cost:
        assert out.cost_verdict == EXACT, summary  # booked == ledger, to the cent
    else:
        assert out.cost_verdict in (EXACT, CONSERVATIVE), summary
    if event.state == "booting":
        # built so that someone watched the activation: no row booked from a last sighting booting
        assert out.unwatched == [], summary
    if event.fault == BLACKHOLE:
        # the route under test: the owner, blocked on SSH, lost the run to another process
        assert out.takeover is not None, summary
    assert out.ok, summary
