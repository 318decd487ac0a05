"""The `trainyard` CLI: a client of the REST API (plus `serve`, `worker` and `db upgrade`, which
run the service itself). It never opens the database for the client commands."""
