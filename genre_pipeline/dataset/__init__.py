"""From ingested TMDb data to a data set: cleaning, labels, splits, EDA. Knows nothing of Dagster."""
