"""`LineageStore` implementations: SQLite (embedded default) and PostgreSQL (shared)."""
