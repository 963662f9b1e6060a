"""Fine-tuning on CPU: every model with its encoders fine-tuned, logged with the weights it trained, and
predicting what its evaluation measured."""

import json
import shutil
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from genre_pipeline import tracking
from genre_pipeline.defs import models
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.models.encoders.text import TextEncoder
from genre_pipeline.models.movie import probability_column
from genre_pipeline.store import DataStore

from .conftest import (
    ASSETS,
    DATASET_ASSETS,
    MINILM,
    MODEL_ASSETS,
    best_constant_macro_f1,
    model_report,
    stack_frame,
)

# Few, larger steps so that three epochs on ~70 demo movies learn something.
FINE_TUNE = {
    "max_epochs": 3,
    "batch_size": 16,
    "patience": 3,
    "encoder_learning_rate": 1e-4,
    "head_learning_rate": 3e-3,
}


@pytest.fixture(scope="module")
def fine_tuned(trained, tmp_path_factory):
    """Every model again, with the encoders fine-tuned on CPU, in a copy of the data folder without
    any model, embedding or MLflow store."""
    data_dir = tmp_path_factory.mktemp("fine-tuned") / "data"
    shutil.copytree(
        trained["store"].root,
        data_dir / "test",
        ignore=shutil.ignore_patterns("models", "embeddings", "mlflow.db", "mlartifacts"),
    )
    res = {**trained["resources"], "storage": StorageResource(data_dir=str(data_dir), source="test")}
    # MiniLM, not the default MPNet: fine-tuning either on CPU proves the same path, MiniLM in a fifth
    # of the time (MPNet made this fixture alone take 12 minutes of the suite).
    # PyTorch as the encoders' inference backend: these tests are about fine-tuning, and each fine-tuned
    # encoder's ONNX export would cost more than its training here (a changed encoder's export is
    # test_encoder_backends' test_the_graph_is_exported_once_per_weights).
    # No temporal evaluation (it would fine-tune every model twice): the trained fixture covers it.
    res["training"] = TrainingResource(
        device="cpu", fine_tune=True, text_encoders=[MINILM], encoder_backend="torch", temporal_test_years=0
    )
    # Posters are decoded in worker processes for fusion (as on a GPU machine), in-process for the image model.
    # Two epochs where a poster encoder trains (the costliest part on a CPU): enough to see the loss fall;
    # the text model's three show that fine-tuning learns. One fusion head: both would fine-tune the
    # encoders twice for the same path.
    posters = {**FINE_TUNE, "max_epochs": 2}
    ops = {
        "text_model": {"fine_tuning": FINE_TUNE},
        "image_model": {"fine_tuning": {**posters, "num_workers": 0}},
        "fusion_model": {"fine_tuning": {**posters, "fusion_heads": "concat_fusion"}},
    }
    result = dg.materialize(
        ASSETS + DATASET_ASSETS + MODEL_ASSETS,
        selection=[models.baseline_model, models.text_model, models.image_model, models.fusion_model],
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),  # not the session's: its latest materializations stay the session's
        run_config={"ops": {name: {"config": config} for name, config in ops.items()}},
    )
    store = DataStore(data_dir / "test")
    return {"result": result, "store": store, "uri": tracking.sqlite_uri(store.mlflow_db)}


def test_fine_tuning_trains_the_encoders_and_logs_them(fine_tuned):
    store = fine_tuned["store"]
    chance = best_constant_macro_f1(store)
    mlflow.set_tracking_uri(fine_tuned["uri"])
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["genre-pipeline"], output_format="list")}
    expected = {"baseline_model": "", "text_model": "text", "image_model": "image", "fusion_model": "text,image"}
    assert {name: runs[name].data.params["fine_tuned_encoders"] for name in expected} == expected
    text = json.loads((store.models_dir / "text_model" / "report.json").read_text())
    assert text["test"]["macro_f1"] > chance + 0.1, (text["test"]["macro_f1"], chance)
    for name in ("text_model", "image_model", "fusion_model"):
        # On ~70 movies, three epochs (two with a poster encoder): the training loss falls in each.
        history = pd.read_csv(store.models_dir / name / "history.csv")
        assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0], name
    # The fine-tuned encoders travel inside the pyfunc model; frozen ones are referenced by name.
    fusion = Path(mlflow.artifacts.download_artifacts(model_report(store, "fusion_model")["model_uri"]))
    assert {p.name for p in (fusion / "artifacts" / "classifier" / "encoders").iterdir()} == {
        "text_encoder",
        "image_encoder.pt",
    }
    baseline = Path(mlflow.artifacts.download_artifacts(model_report(store, "baseline_model")["model_uri"]))
    assert not (baseline / "artifacts" / "classifier" / "encoders").exists()
    # The saved text encoder is not the bundled one: fine-tuning moved its weights.
    text = Path(mlflow.artifacts.download_artifacts(model_report(store, "text_model")["model_uri"]))
    saved = TextEncoder(str(text / "artifacts" / "classifier" / "encoders" / "text_encoder"), backend="torch")
    bundled = TextEncoder(MINILM, backend="torch")
    sentence = ["A lonely robot crosses a desert to find its maker."]
    assert not np.allclose(saved.encode(sentence), bundled.encode(sentence), atol=1e-4)


def test_the_fine_tuned_models_predict_what_their_evaluation_measured(fine_tuned):
    """The pyfunc models run the saved fine-tuned encoders: their probabilities for test movies are the
    ones the test reports were computed from."""
    store = fine_tuned["store"]
    mlflow.set_tracking_uri(fine_tuned["uri"])
    for name in ("text_model", "fusion_model"):
        report = json.loads(store.model_report_file(name).read_text())
        model = mlflow.pyfunc.load_model(report["model_uri"])
        samples = pd.read_csv(store.model_dir(name) / "sample_predictions.csv")
        output = model.predict(stack_frame(store, samples["id"]))
        for (_, row), sample in zip(output.iterrows(), samples["top_3"]):
            for part in sample.split(", "):
                genre, probability = part.rsplit(" ", 1)
                assert row[probability_column(genre)] == pytest.approx(float(probability), abs=0.006), name
