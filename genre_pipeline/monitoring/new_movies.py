"""One refresh's report on the serving champion (the champion_on_new_movies asset): its score on the
movies it never saw, which arrived after its training data was fixed, and drift between those movies
and the ones it trained on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from genre_pipeline.champion.predictor import GenrePredictor
from genre_pipeline.champion.registry import REGISTERED_MODEL
from genre_pipeline.champion.scoring import LabelledMovies, in_classes, labelled_movies
from genre_pipeline.champion.seen import TrainingMovies, unseen_movies
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models.encoders.cache import Embeddings
from genre_pipeline.monitoring import drift, prequential
from genre_pipeline.store import DataStore


@dataclasses.dataclass(frozen=True)
class NewMoviesRecord:
    """What a report leaves in the data folder for the drift checks and the retraining gate."""

    new_ids: list[int]
    score: dict | None  # PrequentialScore.summary(); None when nothing was scored
    drift: list[drift.DriftFigure]
    not_scored: str | None = None  # why the champion was not scored (no champion yet, ...)

    @classmethod
    def unscored(cls, why: str) -> "NewMoviesRecord":
        return cls([], None, [], why)

    def failed_drift(self) -> list[str]:
        return [figure.name for figure in self.drift if not figure.passed]

    def as_json(self) -> dict:
        record = {"new_movies": len(self.new_ids), **dataclasses.asdict(self)}
        return record | {"drift": [figure.as_dict() for figure in self.drift]}

    def save(self, store: DataStore) -> None:
        store.write_json(store.prequential_file, self.as_json())

    @classmethod
    def load(cls, store: DataStore) -> "NewMoviesRecord":
        """The latest record; an unscored one before the first report."""
        record = store.read_json(store.prequential_file, None)
        if record is None:
            return cls.unscored("champion_on_new_movies has not run yet")
        figures = [drift.DriftFigure.from_dict(figure) for figure in record.get("drift", [])]
        return cls(record.get("new_ids", []), record.get("score"), figures, record.get("not_scored"))


@dataclasses.dataclass
class NewMoviesReport:
    new_ids: np.ndarray  # the labelled movies the champion never saw, scored
    score: prequential.PrequentialScore | None  # None without a new movie
    drift: list[drift.DriftFigure]

    def record(self) -> NewMoviesRecord:
        summary = self.score.summary() if self.score else None
        return NewMoviesRecord(self.new_ids.astype(int).tolist(), summary, self.drift)


def _sample(movies: pd.DataFrame, labelled: LabelledMovies, embeddings: Embeddings | None) -> drift.MovieSample:
    rows = movies.loc[labelled.ids]
    vectors = None
    if embeddings is not None:
        row_of = embeddings.by_id()
        if all(int(i) in row_of for i in labelled.ids):
            vectors = embeddings.vectors[[row_of[int(i)] for i in labelled.ids]]
    return drift.MovieSample(
        labels=labelled.labels,
        words=rows["text"].str.split().str.len().to_numpy(),
        languages=rows["original_language"].fillna("").astype(str).to_numpy(),
        has_poster=(rows["poster_status"] == poster_files.OK).to_numpy(),
        embeddings=vectors,
    )


def report_new_movies(
    store: DataStore,
    champion: GenrePredictor,
    seen: TrainingMovies,
    text_embeddings_file: Path | None,
    thresholds: drift.DriftThresholds,
    *,
    resamples: int = 1000,
) -> NewMoviesReport:
    """Score ``champion`` on the labelled movies it never saw (``seen``: the ids its run recorded by
    split) and compare those movies with its training split."""
    label_set, classes = champion.info["label_set"], list(champion.classes)
    new = unseen_movies(store, label_set, seen, classes)
    if len(new.ids) == 0:
        return NewMoviesReport(new.ids, None, [])
    score = prequential.score(champion, new, resamples=resamples)
    # Its training movies still in the data folder, labelled in its classes like the new ones.
    trained = seen.split("train")
    reference = in_classes(store, labelled_movies(store, label_set, trained.__contains__), classes)
    movies = store.read_table(store.movies_clean_file).set_index("id")
    cached = text_embeddings_file is not None and text_embeddings_file.is_file()
    embeddings = Embeddings.load(text_embeddings_file) if cached else None
    figures = drift.drift_figures(
        _sample(movies, reference, embeddings),
        _sample(movies, new, embeddings),
        score.predicted_rates,
        classes,
        thresholds,
    )
    return NewMoviesReport(new.ids, score, figures)


MONITORING_EXPERIMENT_SUFFIX = "-monitoring"


def log_report(report: NewMoviesReport, champion: GenrePredictor, experiment: str, tags: dict) -> str | None:
    """One MLflow run in ``<experiment>-monitoring`` against the champion's registered version (its
    figures as metrics, the per-genre table and drift as artifacts), and the latest figure as a tag of
    the version. The process's store must be the champion's. Returns the run id (None without a score)."""
    if report.score is None:
        return None
    name = experiment + MONITORING_EXPERIMENT_SUFFIX
    existing = mlflow.get_experiment_by_name(name)
    experiment_id = existing.experiment_id if existing else mlflow.create_experiment(name)
    version = champion.info["version"]
    summary = report.score.summary()
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{REGISTERED_MODEL} v{version} on {summary['movies']} new movies",
        tags={
            **tags,
            "registered_model": REGISTERED_MODEL,
            "model_version": version,
            "champion_run_id": champion.info["run_id"],
        },
    ) as run:
        mlflow.log_metrics({f"prequential_{k}": float(v) for k, v in summary.items()})
        mlflow.log_metrics({f"drift_{f.name}": f.value for f in report.drift if not np.isnan(f.value)})
        mlflow.log_table(report.score.per_genre, "prequential_per_genre.json")
        mlflow.log_dict(report.record().as_json(), "champion_on_new_movies.json")
    MlflowClient().set_model_version_tag(
        REGISTERED_MODEL, version, "prequential_macro_f1", f"{summary['macro_f1']} on {summary['movies']} new movies"
    )
    return run.info.run_id
