"""The Pareto rule, one place for every frontier trainyard draws: a plan's rows (US$ against
hours, orchestrator.planning.rows) and the finished runs (test loss against US$, `GET /pareto`).

Both axes are "lower is better". A point dominates another when it is at least as good on both
axes and better on one; the frontier is the points nothing dominates, so equal points are all on
it.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]


def dominates(a: Point, b: Point) -> bool:
    """`a` is at least as low as `b` on both axes and lower on one."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def on_frontier(points: Sequence[Point]) -> list[bool]:
    """For each point, whether no other point `dominates` it; O(n log n), so a frontier over
    every run in the database stays cheap. Sorted by the first axis, a point is dominated exactly
    when an earlier point (a lower first axis) is at least as low on the second, or a point with
    the same first axis is lower on the second."""
    flags = [False] * len(points)
    order = sorted(range(len(points)), key=lambda k: points[k])
    best_before = float("inf")  # the lowest second axis among strictly lower first axes
    start = 0
    while start < len(order):
        x, lowest = points[order[start]]  # sorted: the group's lowest second axis comes first
        stop = start
        while stop < len(order) and points[order[stop]][0] == x:
            y = points[order[stop]][1]
            flags[order[stop]] = not (best_before <= y or lowest < y)
            stop += 1
        best_before = min(best_before, lowest)
        start = stop
    return flags
