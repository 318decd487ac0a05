"""`compute.instance_type: auto`: the instance types a run tries, chosen when it is placed.

The same plan `trainyard plan` shows (orchestrator.planning), made from the provider's types and
capacity now and the throughput records of the spec's shape: the types that fit, are within the
budget (budget.max_usd, budget.max_hours), best first by `compute.objective`, those with capacity
now ahead of those without (placement then waits for capacity among them as for any spec). The
choice and its reason are a run event. Once a machine of the run exists, its type comes first.
When no type qualifies (and none exists) the run fails with one line naming the cheapest
estimate and the budget (PlacementFailed: retrying cannot help).

Blocks for one provider round trip and one database read; runs on placement's task thread.
"""

from __future__ import annotations

from orchestrator.controller.context import RunContext
from orchestrator.db.models import Run
from orchestrator.errors import InvalidSpecError
from orchestrator.planning.lookup import records_of_shape
from orchestrator.planning.plan import make_plan
from orchestrator.planning.rows import auto_candidates, choose, nothing_qualifies
from orchestrator.planning.shape import shape_of
from orchestrator.runs import add_event
from orchestrator.spec import AUTO_INSTANCE_TYPE, RunSpec
from provision.errors import PlacementFailed


def auto_instance_types(ctx: RunContext, run: Run, spec: RunSpec) -> list[str]:
    """The types to try for an auto spec, best first (see the module doc)."""
    # A machine of this run may exist already: another rank's, or one launched just before a
    # worker died (placement adopts it by name). The rest join it on its type: one torchrun world
    # on mixed machines runs at the slowest one's pace, and failing here would orphan it.
    prefix = f"ty-{run.id}-"  # orchestrator.runs.instance_name
    mine = [i.instance_type for i in ctx.provider.list() if i.name.startswith(prefix) and not i.status.is_gone]
    types = ctx.provider.instance_types()
    with ctx.factory() as session:
        records = records_of_shape(session, shape_of(spec).key)
    try:
        plan = make_plan(spec, ctx.provider.name, types, records)
    except InvalidSpecError as exc:
        raise PlacementFailed(f"instance_type auto cannot plan this spec: {exc}") from exc
    objective = spec.compute.objective
    names = [r.instance_type for r in auto_candidates(plan, objective)]
    if mine:
        names = [mine[0]] + [n for n in names if n != mine[0]]
        reason = f"instance_type auto keeps {mine[0]}, the type of this run's machines already launched"
    elif not names:
        raise PlacementFailed(nothing_qualifies(plan))
    else:
        reason = choose(plan, AUTO_INSTANCE_TYPE, objective).reason
    with ctx.write() as (session, _run):
        add_event(session, run.id, "placement", reason)
    return names
