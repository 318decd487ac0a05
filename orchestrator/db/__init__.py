"""Database: models, engine and sessions, and the migration helpers."""
