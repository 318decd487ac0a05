"""The SSH transport every provider's nodes use: pinned host keys (`known_hosts`) and Fabric
connections with timeouts and typed errors (`connection`: `SshNode`, `wait_for_ssh`).
"""
