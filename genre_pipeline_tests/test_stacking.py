"""Cross-fitting, the stacker and the metadata features, on small data made here."""

import numpy as np
import pandas as pd
import pytest

from genre_pipeline.models.encoders import EncoderRef
from genre_pipeline.models.members import MemberInputs, NeighboursMember, TfidfMember
from genre_pipeline.models.metadata import MetadataEncoder, clean, hide_at_random
from genre_pipeline.models.stacker import CompiledTrees, Stacker, boosted_trees
from genre_pipeline.training.config import StackConfig
from genre_pipeline.training.data import TrainingData
from genre_pipeline.training.stack import out_of_fold, tfidf_fitter


def test_out_of_fold_never_predicts_a_row_with_a_model_fitted_on_it():
    rows = np.arange(10, 110)
    seen = {}

    def fit_and_predict(fit_rows, predict_rows):
        for row in predict_rows:
            seen[int(row)] = set(fit_rows.tolist())
        return np.tile(predict_rows[:, None].astype(np.float32), (1, 2))

    result = out_of_fold(fit_and_predict, rows, folds=5, seed=0)
    assert set(seen) == set(rows.tolist())
    assert all(row not in fitted and len(fitted) == 80 for row, fitted in seen.items())
    np.testing.assert_array_equal(result[:, 0], rows)  # each row's prediction lands in its own place
    with pytest.raises(ValueError, match="at least 2 folds"):
        out_of_fold(fit_and_predict, rows, folds=1, seed=0)


def test_the_neighbour_vote_remembers_at_most_its_cap_and_still_finds_near_movies():
    rng = np.random.default_rng(0)
    n, ref = 400, EncoderRef("text", "made-here", "torch")
    # Two clusters of unit vectors; the genre says which cluster a movie is in.
    labels = (np.arange(n) % 2)[:, None].repeat(2, axis=1).astype(np.uint8)
    labels[:, 1] = 1 - labels[:, 0]
    vectors = rng.normal(size=(n, 8)) * 0.1 + np.where(labels[:, :1] == 1, 1.0, -1.0)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    inputs = MemberInputs(
        [""] * n, [""] * n, {ref.key: vectors}, {}, np.zeros(n, dtype=bool), pd.DataFrame(index=range(n))
    )
    capped = NeighboursMember.fit(inputs, labels, ref, max_reference=50, seed=1)
    exact = NeighboursMember.fit(inputs, labels, ref, max_reference=n, seed=1)
    assert len(capped.vectors) == 50 and len(exact.vectors) == n
    # The sample is the seed's, each row kept with its own labels.
    again = NeighboursMember.fit(inputs, labels, ref, max_reference=50, seed=1)
    np.testing.assert_array_equal(again.vectors, capped.vectors)
    rows = [int(np.flatnonzero((vectors == v).all(axis=1))[0]) for v in capped.vectors]
    np.testing.assert_array_equal(capped.labels, labels[rows])
    assert (capped.probabilities(inputs).argmax(axis=1) == labels.argmax(axis=1)).all()
    with pytest.raises(ValueError, match="max_reference=0"):
        NeighboursMember.fit(inputs, labels, ref, max_reference=0, seed=1)


def test_metadata_is_cleaned_and_bad_values_are_named():
    frame = pd.DataFrame(
        {
            "original_language": ["EN", "", None],
            "runtime": [0, 95, None],
            "vote_average": [7.5, 6.0, 8.0],
            "vote_count": [10, 0, None],
        }
    )
    cleaned = clean(frame)
    assert cleaned["original_language"].tolist() == ["en", None, None]
    assert cleaned["runtime"].tolist() == [None, 95.0, None]  # TMDb's 0 means unknown
    assert cleaned["vote_average"].tolist() == [7.5, None, None]  # an average of no votes is unknown
    assert cleaned["release_year"].tolist() == [None, None, None]  # an absent column is all unknown
    with pytest.raises(ValueError, match="'runtime' must be a number"):
        clean(pd.DataFrame({"runtime": ["long"]}))
    encoder = MetadataEncoder.fit(pd.DataFrame({"original_language": ["en"] * 20 + ["fr"] * 3}))
    features = encoder.transform(pd.DataFrame({"original_language": ["en", "fr", None]}))
    assert encoder.languages == ["en"] and encoder.numeric == []  # no training movie had a number
    assert features[:2].tolist() == [[1, 0], [0, 1]] and np.isnan(features[2]).all()  # en, other, unknown


def test_hiding_metadata_hides_whole_movies_and_single_fields():
    frame = pd.DataFrame({"original_language": ["en"] * 4000, "runtime": [100] * 4000, "release_year": [2000] * 4000})
    hidden = hide_at_random(frame, 0.10, 0.05, np.random.default_rng(0))
    none_at_all = hidden.isna().all(axis=1).mean()
    assert 0.09 < none_at_all < 0.11
    assert 0.13 < hidden["runtime"].isna().mean() < 0.16  # 10% of movies, then 5% of the rest
    assert frame["runtime"].notna().all()  # the input is left as it was


def test_compiled_trees_give_scikit_learns_probabilities():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 6))
    x[rng.random(x.shape) < 0.2] = np.nan
    y = np.column_stack([np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) > 0, np.isnan(x[:, 2]) | (x[:, 3] > 1)])
    models = [boosted_trees(len(x), seed=0).fit(x, y[:, j]) for j in range(2)]
    compiled = CompiledTrees.from_models(models)
    probe = rng.normal(size=(700, 6))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    expected = np.column_stack([m.predict_proba(probe)[:, 1] for m in models])
    np.testing.assert_allclose(compiled.probabilities(probe), expected, rtol=1e-9, atol=1e-12)
    assert len(compiled.roots) > 50  # many trees were walked, not a constant


def synthetic(n: int, rng: np.random.Generator):
    """Two genres: the first decided by a member's probability, the second by the runtime alone."""
    runtime = rng.uniform(20, 180, n)
    labels = np.column_stack([rng.random(n) < 0.5, runtime < 60]).astype(np.uint8)
    member = np.clip(labels[:, :1] * 0.6 + rng.random((n, 1)) * 0.4, 0, 1)
    probabilities = {"member": np.column_stack([member[:, 0], rng.random(n)]).astype(np.float32)}
    metadata = pd.DataFrame({"runtime": runtime, "original_language": "en"})
    inputs = MemberInputs([""] * n, [""] * n, {}, {}, np.zeros(n, dtype=bool), metadata)
    return probabilities, inputs, labels


def test_the_stacker_learns_from_metadata_and_predicts_without_it():
    rng = np.random.default_rng(2024)  # not the stacker's seed: which movies it hides must not follow the data
    probabilities, inputs, labels = synthetic(3000, rng)
    stacker = Stacker.fit(probabilities, [], inputs, labels, use_metadata=True, seed=0)
    test_probabilities, test_inputs, test_labels = synthetic(500, rng)
    predicted = stacker.probabilities(test_probabilities, test_inputs)
    assert ((predicted[:, 1] > 0.5) == test_labels[:, 1]).mean() > 0.95  # the runtime was read
    assert ((predicted[:, 0] > 0.5) == test_labels[:, 0]).mean() > 0.9  # and the member
    no_metadata = MemberInputs(
        *[getattr(test_inputs, f) for f in ("texts", "titles", "text_features")],
        {},
        test_inputs.has_poster,
        pd.DataFrame(index=range(500)),
    )
    blind = stacker.probabilities(test_probabilities, no_metadata)
    assert np.isfinite(blind).all()
    # Without the runtime the second genre falls back to about its base rate (~1/4), for every movie:
    # the stacker learned what a missing runtime means instead of reading it as a real value.
    assert np.abs(blind[:, 1] - labels[:, 1].mean()).mean() < 0.1
    assert ((blind[:, 0] > 0.5) == test_labels[:, 0]).mean() > 0.9


def movie_texts(n: int, rng: np.random.Generator) -> TrainingData:
    """Movies whose overviews draw words from their two genres' vocabularies; 60% train, the rest test."""
    words = [["space", "alien", "planet", "robot"], ["love", "wedding", "kiss", "heart"]]
    labels = (rng.random((n, 2)) < 0.4).astype(np.uint8)
    texts = [
        " ".join(rng.choice(sum((words[g] for g in np.flatnonzero(row)), ["the", "a", "story", "town"]), 12))
        for row in labels
    ]
    return TrainingData(
        ids=np.arange(n),
        titles=[f"Title {i % 17}" for i in range(n)],
        texts=texts,
        split=np.where(np.arange(n) < n * 0.6, "train", "test"),
        labels=labels,
        classes=["Science Fiction", "Romance"],
        text_features={},
        poster_features={},
        has_poster=np.zeros(n, dtype=bool),
        poster_files=[None] * n,
        metadata=pd.DataFrame(index=range(n)),
    )


def test_cross_fitted_tfidf_members_share_one_vectorizer_and_the_full_member_is_as_if_fitted_alone():
    data = movie_texts(300, np.random.default_rng(7))
    config = StackConfig(folds=3)
    fit = tfidf_fitter(data, config)
    train = np.flatnonzero(data.rows("train"))
    fold_members = []

    def fit_and_predict(fit_rows, predict_rows):
        mask = np.zeros(len(data.ids), dtype=bool)
        mask[fit_rows] = True
        fold_members.append(fit(mask))
        return fold_members[-1].probabilities(data.inputs(predict_rows))

    out_of_fold(fit_and_predict, train, config.folds, config.seed)
    full = fit(data.rows("train"))
    alone = TfidfMember.fit(
        data.inputs(data.rows("train")), data.labels[train], C=config.tfidf_C, seed=config.seed, with_title=True
    )
    test = data.inputs(data.rows("test"))
    np.testing.assert_allclose(full.probabilities(test), alone.probabilities(test), rtol=1e-4, atol=1e-6)
    assert {id(m.pipeline.named_steps["tfidf"]) for m in fold_members} == {id(full.pipeline.named_steps["tfidf"])}
    assert ((full.probabilities(test) > 0.5) == data.labels[data.rows("test")]).mean() > 0.9  # it learned the words
