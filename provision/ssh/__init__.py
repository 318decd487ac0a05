"""SSH for trainyard: pinned host keys (`known_hosts`), Fabric connections with timeouts and typed
errors (`connection`: `SshNode`, `wait_for_ssh`), and the `ssh` provider for machines the user
already has (`provider`). `files` holds the locked, atomic file writes they share.
"""
