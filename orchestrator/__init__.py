"""orchestrator: the trainyard service (API, controller, database, CLI)."""
