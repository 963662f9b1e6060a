"""Encoder throughput and accuracy on each inference backend, on the snapshot's real texts and posters.

    python benchmarks/embeddings.py --snapshot ../shared/data/tmdb-snapshot

Needs the snapshot's data set (movies_clean, labels, splits) in the data folder: run
benchmarks/dataset.py or models.py on the snapshot first. For each text encoder (MiniLM, and
MPNet where `make mpnet` installed it) and the image encoder, in one run:

- speed: texts (posters) per second on a fixed random sample, per backend, and its ratio to
  PyTorch fp32 measured in the same run; tokenizing and decoding included, as the assets run;
- accuracy guard, part 1: cosine of each backend's embeddings to PyTorch fp32 on that sample;
- accuracy guard, part 2 (text): a text head trained as text_model trains it, on each backend's
  embeddings of a train sample, and its macro-F1 on the whole validation split (thresholds tuned
  there, as the pipeline reports validation macro-F1). The fp32 reference here is ONNX fp32,
  whose cosine to PyTorch fp32 part 1 shows; encoding ~6,000 texts with eager MPNet would take
  the run 10 minutes more;
- the whole snapshot's texts encoded by the default backend, timed.

The last line is one JSON object.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import select_snapshot

TARGETS = {"mpnet_speedup": 2.0, "mpnet_snapshot_s": 480, "validation_macro_f1_drop": 0.005}


def encode_timed(encoder, inputs: list) -> tuple[np.ndarray, float]:
    encoder.encode(inputs[:8])  # loads (or exports) the graph and warms it, outside the timing
    started = time.perf_counter()
    vectors = encoder.encode(inputs)
    return vectors, time.perf_counter() - started


def head_validation_macro_f1(train_x, train_y, val_x, val_y) -> float:
    from sklearn.metrics import f1_score

    from genre_pipeline.models.heads import build_head, predict_proba
    from genre_pipeline.models.thresholds import apply_thresholds, choose_thresholds
    from genre_pipeline.training.config import TrainingConfig
    from genre_pipeline.training.loop import set_seeds, train_head

    config = TrainingConfig()
    set_seeds(config.seed)
    head = build_head("text", n_labels=train_y.shape[1], text_dim=train_x.shape[1])
    model = train_head(head, train_x, train_y, val_x, val_y, config).model
    probabilities = predict_proba(model, val_x)
    predictions = apply_thresholds(probabilities, choose_thresholds(probabilities, val_y).thresholds)
    return float(f1_score(val_y, predictions, average="macro", zero_division=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", required=True, type=Path)
    parser.add_argument("--speed-texts", type=int, default=600, help="texts in the speed sample")
    parser.add_argument("--speed-posters", type=int, default=512, help="posters in the speed sample")
    parser.add_argument("--guard-train", type=int, default=4000, help="train movies for the downstream guard")
    parser.add_argument("--text-encoders", default="all-MiniLM-L6-v2,all-mpnet-base-v2")
    args = parser.parse_args()
    select_snapshot(args.snapshot)
    import torch

    from genre_pipeline import settings
    from genre_pipeline.models.encoders import EncoderUnavailable
    from genre_pipeline.models.encoders.image import ImageEncoder
    from genre_pipeline.models.encoders.onnx_backend import BACKENDS, DEFAULT_BACKEND, compare
    from genre_pipeline.models.encoders.text import TextEncoder
    from genre_pipeline.store import DataStore

    store = DataStore(settings.default_data_dir() / settings.configured_source().slug)
    movies = store.read_table(store.movies_clean_file).set_index("id")
    labels = store.read_table(store.labels_file("full")).set_index("id")
    splits = store.read_table(store.splits_file).set_index("id")["split"]
    rng = np.random.default_rng(0)
    texts = movies["text"].tolist()
    speed_texts = [texts[i] for i in rng.choice(len(texts), args.speed_texts, replace=False)]
    train_ids = rng.choice(splits.index[splits == "train"].to_numpy(), args.guard_train, replace=False)
    val_ids = splits.index[splits == "validation"].to_numpy()
    guard_texts = movies.loc[np.concatenate([train_ids, val_ids]), "text"].tolist()
    train_y, val_y = labels.loc[train_ids].to_numpy(), labels.loc[val_ids].to_numpy()
    print(
        f"torch threads {torch.get_num_threads()}; speed sample {len(speed_texts)} texts; downstream guard "
        f"on {len(train_ids)} train and {len(val_ids)} validation movies",
        flush=True,
    )

    report = {"text": {}, "image": {}}
    for name in args.text_encoders.split(","):
        try:
            encoders = {backend: TextEncoder(name, backend=backend) for backend in BACKENDS}
        except EncoderUnavailable as error:
            print(f"{name}: skipped ({error})", flush=True)
            continue
        speed, vectors = {}, {}
        for backend, encoder in encoders.items():
            vectors[backend], seconds = encode_timed(encoder, speed_texts)
            speed[backend] = len(speed_texts) / seconds
        figures = {}
        for backend, encoder in encoders.items():
            guard = compare(vectors["torch"], vectors[backend])
            figures[backend] = {
                "ran_on": encoder.backend,
                "texts_per_s": round(speed[backend], 1),
                "ratio_to_torch": round(speed[backend] / speed["torch"], 2),
                "cosine_mean": round(guard.mean_cosine, 5),
                "cosine_min": round(guard.min_cosine, 5),
            }
            print(name, backend, figures[backend], flush=True)
        reference_f1 = None
        for backend in ("onnx", "onnx-int8"):
            embedded, seconds = encode_timed(encoders[backend], guard_texts)
            f1 = head_validation_macro_f1(embedded[: len(train_ids)], train_y, embedded[len(train_ids) :], val_y)
            reference_f1 = reference_f1 if reference_f1 is not None else f1
            figures[backend]["head_validation_macro_f1"] = round(f1, 4)
            figures[backend]["macro_f1_drop_vs_fp32"] = round(reference_f1 - f1, 4)
            print(name, backend, f"head validation macro-F1 {f1:.4f} ({len(guard_texts)} texts in {seconds:.0f} s)")
        _, snapshot_seconds = encode_timed(encoders[DEFAULT_BACKEND], texts)
        figures["snapshot"] = {"backend": DEFAULT_BACKEND, "texts": len(texts), "seconds": round(snapshot_seconds, 1)}
        print(name, "whole snapshot", figures["snapshot"], flush=True)
        report["text"][name] = figures

    posters = movies.loc[movies["poster_status"] == "ok", "poster_file"].tolist()
    sample = [store.root / posters[i] for i in rng.choice(len(posters), args.speed_posters, replace=False)]
    image_vectors, image_speed = {}, {}
    for backend in BACKENDS:
        encoder = ImageEncoder(backend=backend)
        image_vectors[backend], seconds = encode_timed(encoder, sample)
        image_speed[backend] = len(sample) / seconds
        guard = compare(image_vectors["torch"], image_vectors[backend])
        report["image"][backend] = {
            "ran_on": encoder.backend,
            "posters_per_s": round(image_speed[backend], 1),
            "ratio_to_torch": round(image_speed[backend] / image_speed["torch"], 2),
            "cosine_mean": round(guard.mean_cosine, 5),
            "cosine_min": round(guard.min_cosine, 5),
        }
        print(encoder.name, backend, report["image"][backend], flush=True)

    mpnet = report["text"].get("all-mpnet-base-v2")
    targets = {}
    if mpnet:
        fast = mpnet[DEFAULT_BACKEND]
        targets = {
            "mpnet_speedup": fast["ratio_to_torch"],
            "mpnet_speedup_met": fast["ratio_to_torch"] >= TARGETS["mpnet_speedup"],
            "mpnet_guard_met": fast["macro_f1_drop_vs_fp32"] <= TARGETS["validation_macro_f1_drop"],
            "mpnet_snapshot_s": mpnet["snapshot"]["seconds"],
            "mpnet_snapshot_under_8_min_met": mpnet["snapshot"]["seconds"] < TARGETS["mpnet_snapshot_s"],
        }
    print("targets:", targets)
    print(json.dumps({"default_backend": DEFAULT_BACKEND, **report, "targets": targets}))


if __name__ == "__main__":
    main()
