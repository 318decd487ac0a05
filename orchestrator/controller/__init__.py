"""The controller: moves runs through their lifecycle (DESIGN.md, "A run's life").

`Worker` is the entry point (`trainyard serve` runs one in a thread, `trainyard worker` alone).
Modules: `lease` (who may act on a run), `steps` (what to do next in each status), `lifecycle`
(ending runs, terminating instances, budgets), `ingest` (metrics and logs off the node),
`commands` (the trainer's command lines), `context` (what one step works with).
"""

from orchestrator.controller.worker import Worker

__all__ = ["Worker"]
