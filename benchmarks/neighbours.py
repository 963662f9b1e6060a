"""What the neighbour vote's reference cap costs the stacked model, on a data folder that a run has
filled (embeddings cached, splits made), for instance the snapshot's:

    python benchmarks/neighbours.py --data data/snapshot-tmdb-snapshot-d3e1aece --caps 5000 2500

Trains the stack on the folder's train split once with every train movie as reference (exact search)
and once per cap below the train split's size, and prints the test macro-F1 of the stack and of the
neighbour member alone, the difference from exact, and the wall time of each training. Nothing is
logged or registered. The last line is one JSON object.
"""

import argparse
import dataclasses
import json
import time

from genre_pipeline.defs.resources import TrainingResource
from genre_pipeline.store import DataStore
from genre_pipeline.training import data as training_data
from genre_pipeline.training.config import StackConfig, TrainingConfig
from genre_pipeline.training.stack import train_stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a data folder with cached embeddings and splits")
    parser.add_argument("--caps", type=int, nargs="+", default=[5000, 2500])
    args = parser.parse_args()
    store = DataStore(args.data)
    setup = TrainingResource().setup(store)
    data, _ = training_data.load(
        store, setup.label_set, list(setup.text_encoders), [setup.image_encoder] if setup.image_encoder else []
    )
    train_movies = int(data.rows("train").sum())
    results = []
    for cap in [None, *args.caps]:
        config = StackConfig(neighbours_max_reference=cap or train_movies)
        started = time.monotonic()
        outcome = train_stack(data, TrainingConfig(), config, list(setup.text_encoders), setup.image_encoder)
        members = outcome.extra["members"]
        neighbours = next(scores for name, scores in members.items() if name.startswith("neighbours["))
        result = {
            "max_reference": cap or "exact",
            "stack_test_macro_f1": round(outcome.test["summary"]["macro_f1"], 4),
            "neighbours_test_macro_f1": round(neighbours["test_macro_f1"], 4),
            "train_s": round(time.monotonic() - started, 1),
        }
        if results:
            result["stack_change"] = round(result["stack_test_macro_f1"] - results[0]["stack_test_macro_f1"], 4)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(json.dumps({"train_movies": train_movies, "stack": dataclasses.asdict(StackConfig()), "runs": results}))


if __name__ == "__main__":
    main()
