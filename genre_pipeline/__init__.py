"""genre_pipeline: movie genre prediction from TMDb metadata, as Dagster assets."""
