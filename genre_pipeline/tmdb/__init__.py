"""TMDb access: the HTTP client, the replay server and the demo catalog. Knows nothing of Dagster."""
