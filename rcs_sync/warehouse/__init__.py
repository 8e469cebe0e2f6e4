"""Where records land: the DuckDB file, its migrations, loading, bookkeeping, snapshot, privacy."""
