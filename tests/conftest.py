"""The root of the tests: pytest puts this folder on sys.path for this file, so the helpers
shared by every folder import by their names (simhelpers, openai_fake, s3server).

The fixtures live next to the tests that use them: tests/orchestrator/conftest.py (databases on
SQLite and PostgreSQL, the service), tests/provision/conftest.py (the Lambda simulator),
tests/trainer/conftest.py (the prepared corpus).
"""
