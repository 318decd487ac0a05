"""The controller: moves runs through their lifecycle (docs/architecture.md, "A run's life").

`Worker` is the entry point (`trainyard serve` runs one in a thread, `trainyard worker` alone).
Modules:
- `worker`: claims runs under leases (`lease`) and reconciles each one, pass after pass;
- `steps`: the state machine (`TRANSITIONS`), the only place a run's status changes, `end_run`;
- the stages, one per status, each answering with an outcome (`outcomes`): `placement`
  (provisioning), `bootstrapping`, `training` (training and recovering), `evaluation`;
- `policy`: what an exception means for the run (retry, count, recover, fail) and its one line;
- `lifecycle`: instances recorded, terminated and booked;
- `budget`: the budget rule (alerts, a graceful stop with a checkpoint and a test loss, the backstop);
- `ingest` (metrics and logs off the node), `storage` (the artifact store, node credentials,
  retention), `commands` (the trainer's command lines), `context` (what one step works with),
  `tasks` (threads for blocking work), `comparing` (judging comparisons).
"""

from orchestrator.controller.worker import Worker

__all__ = ["Worker"]
