"""Placement: rent one instance of the first instance type and region that has capacity.

A run spec names instance types in order of preference (the first is wanted, the rest are
fallbacks) and, optionally, the regions allowed (in order; empty means any). `place` turns that
into exactly one instance:

1. `provider.find_by_name(name)`: an instance with this name already exists (an earlier try got
   as far as launching, then the worker died or the call was retried), so it is returned and
   nothing is launched. This is what makes `place` safe to retry.
2. Read capacity once (`provider.instance_types()`, one round trip), then walk the candidates:
   for the first type, each allowed region that has capacity, in the spec's order; then the same
   for each fallback type. The first launch that is accepted wins.
3. Just before each launch request the caller's `before_launch` hook runs (the controller
   re-checks its lease and looks the name up again: a wait for capacity lasts minutes, and its
   worker may have been paused and replaced meanwhile). It may stop the launch by raising, or
   return an instance that now has the name, which is returned.
   Capacity can vanish between the read and the launch: `InsufficientCapacity` from `launch`
   moves on to the next candidate.
4. When no candidate had capacity, wait `poll_s` and read capacity again, until `timeout_s` has
   passed; then raise `PlacementFailed`, naming every type and region tried. Nothing is launched
   in that case.

Every move is reported through `on_event(message)` (the controller records them as run events).
Errors other than `InsufficientCapacity` (quota, credentials, a provider outage after the
client's own retries) are raised at once: waiting would not help, or the caller decides.

Blocks: up to `timeout_s` (plus one provider round trip); each provider call has its own timeout.
Idempotent: yes, by name (step 1), provided the caller uses one name per (run, node rank).
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from provision.base import Instance, InstanceType, Provider
from provision.errors import InsufficientCapacity, InvalidRequest, PlacementFailed

log = logging.getLogger("provision.placement")

EventSink = Callable[[str], None]


def place(
    provider: Provider,
    *,
    name: str,
    instance_types: list[str],
    regions: Iterable[str] = (),
    timeout_s: float = 600.0,
    poll_s: float = 15.0,
    on_event: EventSink | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    before_launch: Callable[[str, str], Instance | None] | None = None,
) -> Instance:
    """Return the instance called `name`, launching it where capacity allows. See the module doc.

    Raises `PlacementFailed` when nothing had capacity for `timeout_s`, `InvalidRequest` when
    the provider offers none of `instance_types`, and any other `ProvisionError` from the
    provider as it comes. `before_launch(instance_type, region)` is called immediately before
    each launch request: it may raise (nothing is launched) or return an instance that now has
    the name (returned as it is; a wait for capacity can outlast the first look by minutes).
    """
    wanted = list(dict.fromkeys(instance_types))
    allowed = list(dict.fromkeys(regions))
    if not wanted:
        raise InvalidRequest("placement needs at least one instance type")

    def event(message: str) -> None:
        log.info("%s: %s", name, message)
        if on_event is not None:
            on_event(message)

    existing = provider.find_by_name(name)
    if existing is not None:
        event(
            f"instance {name} already exists ({existing.instance_type} in {existing.region}, "
            f"{existing.status.value}); not launching another"
        )
        return existing

    deadline = clock() + timeout_s
    tried: dict[str, set[str]] = {t: set() for t in wanted}
    polls = 0
    while True:
        polls += 1
        offers = {t.name: t for t in provider.instance_types()}
        unknown = [t for t in wanted if t not in offers]
        if len(unknown) == len(wanted):
            raise InvalidRequest(f"{provider.name} offers none of the instance types {', '.join(wanted)}")
        for type_name in wanted:
            offer = offers.get(type_name)
            if offer is None:
                if polls == 1:
                    event(f"{type_name}: not offered by {provider.name}; skipped")
                continue
            candidates = _regions_for(offer, allowed)
            if not candidates:
                event(f"{type_name}: no capacity in {_where(allowed)}")
            for region in candidates:
                tried[type_name].add(region)
                if before_launch is not None:
                    # the caller's last word before money is spent: it may have lost the right
                    # to launch (raises), or the name may have appeared meanwhile (returned)
                    found = before_launch(type_name, region)
                    if found is not None:
                        event(f"instance {name} appeared meanwhile ({found.status.value}); not launching another")
                        return found
                try:
                    instance = provider.launch(name=name, instance_type=type_name, region=region)
                except InsufficientCapacity:
                    event(f"{type_name} in {region}: capacity gone before the launch; trying the next")
                    continue
                fallback = "" if type_name == wanted[0] else f" (fallback for {wanted[0]})"
                event(f"launched {name}: {type_name} in {region}{fallback}, instance {instance.id}")
                return instance
        left = deadline - clock()
        if left <= 0:
            raise PlacementFailed(_failure_message(name, wanted, allowed, tried, timeout_s, polls))
        wait = min(poll_s, left)
        event(f"no capacity for {', '.join(wanted)} in {_where(allowed)}; checking again in {wait:.0f}s")
        sleep(wait)


def _regions_for(offer: InstanceType, allowed: list[str]) -> list[str]:
    """The allowed regions that have capacity for `offer`, in the spec's order (any: the provider's)."""
    if not allowed:
        return list(offer.regions_with_capacity)
    return [r for r in allowed if r in offer.regions_with_capacity]


def _where(allowed: list[str]) -> str:
    return ", ".join(allowed) if allowed else "any region"


def _failure_message(
    name: str, wanted: list[str], allowed: list[str], tried: dict[str, set[str]], timeout_s: float, polls: int
) -> str:
    attempts = "; ".join(
        f"{t}: launch refused in {', '.join(sorted(tried[t]))}" if tried[t] else f"{t}: no capacity" for t in wanted
    )
    return (
        f"no capacity to place {name} after {timeout_s:g}s ({polls} capacity checks): "
        f"instance types {', '.join(wanted)} in {_where(allowed)} ({attempts})"
    )
