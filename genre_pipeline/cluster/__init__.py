"""Scale-out: a local deployment (PostgreSQL, Redis, Celery workers, Dagster daemon and UI) and runs on it."""
