"""The chaos run's report: one line per event as it ends, then a markdown table, a summary line,
and for each event that failed, or passed with a conservative over-bill, its evidence (the run's
instances as the database and the simulator show them, the ledger, the run's last events).

Cost verdicts (verdict.py): `exact`, `conservative` (over the ledger by at most one increment on
an instance whose activation nobody watched: the controller's by-design "never below the bill";
the event passes and its row says so) and `MISMATCH` (the event fails). The summary counts
MISMATCHes as cost mismatches, and conservative over-bills on a count of their own."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from benchmarks.chaos.verdict import CONSERVATIVE, EXACT, MISMATCH, Outcome, cents


@dataclass
class Summary:
    events: int
    converged: int
    double_launches: int
    orphans: int
    cost_mismatches: int
    #: events whose cost is a conservative over-bill (unwatched boot, by design): passed
    conservative: int = 0
    failed: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, outcomes: list[Outcome]) -> Summary:
        return cls(
            events=len(outcomes),
            converged=sum(1 for o in outcomes if o.error is None and o.converged and o.final == o.event.expected),
            double_launches=sum(1 for o in outcomes if o.double_launch),
            orphans=sum(len(o.orphans) for o in outcomes),
            cost_mismatches=sum(1 for o in outcomes if o.cost_verdict == MISMATCH),
            conservative=sum(1 for o in outcomes if o.cost_verdict == CONSERVATIVE),
            failed=[i for i, o in enumerate(outcomes, 1) if not o.ok],
        )

    def line(self) -> str:
        return (
            f"{self.events} events: converged {self.converged}/{self.events} to the expected state, "
            f"{self.double_launches} double launch(es), {self.orphans} orphan(s), "
            f"{self.cost_mismatches} cost mismatch(es); "
            f"conservative over-bills (unwatched boot, by design): {self.conservative}"
        )


def _money(value: object) -> str:
    return "-" if value is None else f"{cents(value):.2f}"  # type: ignore[arg-type]


def progress_line(i: int, n: int, o: Outcome) -> str:
    launches = ",".join(str(o.launches.get(r, 0)) for r in range(o.event.nodes)) or "-"
    took = f"{o.converge_s:.1f} s" if o.converge_s is not None else "-"
    verdict = "ok" if o.ok else "FAILED: " + "; ".join(o.failures())
    return (
        f"[{i}/{n}] {o.event.label}: run {o.run_id} hit at {o.state_hit or '?'} -> {o.final or '?'}, "
        f"converged {'yes' if o.converged else 'no'} ({took}), launches {launches}, orphans {len(o.orphans)}, "
        f"booked {_money(o.booked_cents)} c vs ledger {_money(o.ledger_cents)} c ({o.cost_verdict or '?'}): {verdict}"
        + (f" ({'; '.join(o.cost_lines)})" if o.cost_verdict == CONSERVATIVE else "")
    )


def _ok_cell(o: Outcome) -> str:
    if not o.ok:
        return "**no**"
    if o.cost_verdict == CONSERVATIVE:
        names = ", ".join(line.split(":", 1)[0] for line in o.cost_lines)
        over = cents(o.booked_cents or 0) - cents(o.ledger_cents or 0)
        return f"yes, but over-billed {over:+} ¢ (conservative: unwatched boot of {names}, by design)"
    return "yes"


def _cost_cell(o: Outcome) -> str:
    if o.cost_verdict is None:
        return "-"
    return o.cost_verdict if o.cost_verdict == EXACT else f"**{o.cost_verdict}**"


def table(outcomes: list[Outcome]) -> str:
    head = (
        "| # | scenario | fault | state aimed at | state hit | process hit | run | expected | final | converged "
        "| converge s | launches per rank | orphans | booked ¢ | ledger ¢ | cost | ok |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for i, o in enumerate(outcomes, 1):
        e = o.event
        launches = ", ".join(str(o.launches.get(r, 0)) for r in range(e.nodes))
        cells = [
            str(i),
            e.scenario + (f" ({e.nodes} nodes)" if e.nodes > 1 else ""),
            e.fault,
            e.state,
            o.state_hit or "-",
            o.target or "-",
            f"`{o.run_id}`" if o.run_id else "-",
            e.expected,
            o.final or "-",
            "yes" if o.converged else "**no**",
            f"{o.converge_s:.1f}" if o.converge_s is not None else "-",
            launches if not o.double_launch else f"**{launches}**",
            str(len(o.orphans)) if not o.orphans else f"**{len(o.orphans)}**",
            _money(o.booked_cents),
            _money(o.ledger_cents) if o.ledger_cents is not None else "n/a (0)",
            _cost_cell(o),
            _ok_cell(o),
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def details(outcomes: list[Outcome], which: list[int]) -> str:
    """The evidence of the events numbered `which` (1-based)."""
    parts = []
    for i, o in enumerate(outcomes, 1):
        if i not in which:
            continue
        what = "; ".join(o.failures()) if not o.ok else f"passed, cost {o.cost_verdict}"
        parts.append(f"### #{i} {o.event.label}: run `{o.run_id}`: {what}\n")
        if o.reason:
            parts.append(f"- final status reason: {o.reason}")
        if o.orphans:
            parts.append(f"- still running at the provider: {', '.join(o.orphans)}")
        parts.extend(f"- {note}" for note in o.notes)
        if o.evidence:
            parts.append("\n```\n" + "\n".join(o.evidence) + "\n```\n")
    return "\n".join(parts)


def markdown(header: list[str], outcomes: list[Outcome]) -> str:
    summary = Summary.of(outcomes)
    body = [*header, "", f"**{summary.line()}**", "", table(outcomes), ""]
    body += [
        "Cost: `exact` booked == ledger to the cent; `conservative` over the ledger by at most one billing "
        "increment on instances whose activation nobody watched (booked `active_at` == `booting_seen_at`: the "
        "boot booked from its last sighting booting, never below the bill, by design), passed; `MISMATCH` "
        "anything else (under the ledger, or over it unexplained), failed.",
        "",
    ]
    exact_passes = [i for i, o in enumerate(outcomes, 1) if o.ok and o.cost_verdict == EXACT]
    notes = [f"- #{i}: " + "; ".join(outcomes[i - 1].notes) for i in exact_passes if outcomes[i - 1].notes]
    if notes:
        body += ["What the harness did and saw in each event that passed exactly:", "", *notes, ""]
    over = [i for i, o in enumerate(outcomes, 1) if o.ok and o.cost_verdict == CONSERVATIVE]
    if over:
        body += ["## Passed with a conservative over-bill (unwatched boot, by design)", "", details(outcomes, over)]
    if summary.failed:
        body += ["## Failed events", "", details(outcomes, summary.failed)]
    return "\n".join(body) + "\n"


def as_json(outcomes: list[Outcome]) -> str:
    rows = [
        {
            "scenario": o.event.scenario,
            "fault": o.event.fault,
            "state": o.event.state,
            "nodes": o.event.nodes,
            "run_id": o.run_id,
            "state_hit": o.state_hit,
            "target": o.target,
            "expected": o.event.expected,
            "final": o.final,
            "reason": o.reason,
            "converged": o.converged,
            "converge_s": o.converge_s,
            "launches": o.launches,
            "orphans": o.orphans,
            "booked_cents": None if o.booked_cents is None else str(o.booked_cents),
            "ledger_cents": None if o.ledger_cents is None else str(o.ledger_cents),
            "cost_verdict": o.cost_verdict,
            "cost_lines": o.cost_lines,
            "unwatched": o.unwatched,
            "takeover": o.takeover,
            "ok": o.ok,
            "failures": o.failures(),
            "notes": o.notes,
            "evidence": o.evidence,
        }
        for o in outcomes
    ]
    return json.dumps({"summary": Summary.of(outcomes).__dict__, "events": rows}, indent=1)
