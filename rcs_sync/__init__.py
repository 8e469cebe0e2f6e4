"""rcs-sync: a DuckDB warehouse kept in step with a provider's record endpoints."""
