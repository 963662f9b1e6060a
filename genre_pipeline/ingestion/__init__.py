"""TMDb ingestion as plain functions, one module per step: ``discover`` (pages per release year),
``details`` (the per-movie re-query), ``posters`` (download, verification, statuses). Each takes a
TMDbClient (and, for posters, a DataStore) and knows nothing of Dagster."""
