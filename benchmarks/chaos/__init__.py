"""The chaos harness (benchmarks/chaos/README.md): faults injected into a real trainyard deployment.

Its modules import the tests' helpers by name (`orchestrator_helpers`, `simhelpers`): pytest puts
their folders on sys.path, and `chaos.py` does the same before importing them.
"""
