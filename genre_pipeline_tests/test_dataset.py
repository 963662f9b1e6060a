"""Cleaning rules, the label merge rule, stable splits and the EDA files, on small hand-built data."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from genre_pipeline.dataset import cleaning, eda, labels, splits


def movie(
    movie_id,
    title="T",
    year=2000,
    overview="a quiet story of five words",
    tagline="",
    genres=("Drama",),
    popularity=1.0,
    poster="ok",
):
    return {
        "id": movie_id,
        "title": title,
        "release_year": year,
        "overview": overview,
        "tagline": tagline,
        "genres": list(genres),
        "popularity": popularity,
        "poster_status": poster,
        "poster_file": f"posters/images/{movie_id}.jpg" if poster == "ok" else None,
        "poster_sha1": f"{movie_id:040d}" if poster == "ok" else None,
        # What details_frame reads from /movie/{id} for the models; cleaning only carries it along.
        "original_language": "en",
        "runtime": 100,
        "vote_average": 6.5,
        "vote_count": 120,
    }


def test_each_cleaning_rule_drops_and_counts_its_rows():
    frame = pd.DataFrame(
        [
            movie(1, title="Alpha"),
            movie(1, title="Alpha again"),  # duplicate id
            movie(2, title="Remake", popularity=5.0),
            movie(3, title="remake", popularity=9.0),  # same title and year, more popular
            movie(4, title="Mute", overview=""),  # no overview
            movie(5, title="Nameless", genres=()),  # no genres
            movie(6, title="Short", overview="too short"),  # 2 tokens
            movie(7, title="Long", overview=" ".join(["word"] * 40)),  # over the max
            movie(8, title="Tagged", tagline="Some tagline."),
        ]
    )
    result = cleaning.clean_movies(frame, cleaning.CleaningRules(min_overview_tokens=5, max_overview_tokens=30))
    assert result.dropped == {
        "duplicate_id": 1,
        "duplicate_title_year": 1,
        "no_overview": 1,
        "no_genres": 1,
        "no_tagline": 0,
        "overview_too_short": 1,
        "overview_too_long": 1,
    }
    assert result.movies["id"].tolist() == [1, 3, 8]
    assert result.movies.set_index("id").at[1, "title"] == "Alpha"
    assert result.rows_in == len(frame) == len(result.movies) + sum(result.dropped.values())
    assert result.kept_by_tagline_policy == {"require_tagline": 1, "keep_without_tagline": 3}


def test_the_require_tagline_rule_keeps_only_movies_with_taglines():
    frame = pd.DataFrame([movie(1, title="A", tagline="Yes."), movie(2, title="B"), movie(3, title="C")])
    result = cleaning.clean_movies(frame, cleaning.CleaningRules(require_tagline=True))
    assert result.movies["id"].tolist() == [1] and result.dropped["no_tagline"] == 2
    assert result.kept_by_tagline_policy == {"require_tagline": 1, "keep_without_tagline": 3}


def test_model_text_joins_overview_and_tagline_normalized():
    assert cleaning.normalize_text("  Ｆｕｌｌ\u00a0width\n\ttext ") == "Full width text"
    assert cleaning.model_text("A story.", "Big tagline.") == "A story. Big tagline."
    assert cleaning.model_text("A story. Big tagline.", "big tagline.") == "A story. Big tagline."


def test_details_frame_joins_poster_status():
    details = [
        {
            "id": 1,
            "title": "A",
            "release_date": "1999-02-03",
            "overview": "o",
            "tagline": None,
            "genres": [{"id": 18, "name": "Drama"}],
            "original_language": "fr",
            "runtime": 104,
            "vote_average": 7.1,
            "vote_count": 88,
        },
        {"id": 2, "title": "B", "release_date": None, "overview": "o", "genres": [], "original_language": ""},
    ]
    status = pd.DataFrame([{"id": 1, "status": "corrupt", "file": None}])
    frame = cleaning.details_frame(details, status)
    assert frame["release_year"].tolist()[0] == 1999 and pd.isna(frame["release_year"].tolist()[1])
    assert frame["poster_status"].tolist() == ["corrupt", "not_downloaded"]
    assert frame["genres"].tolist() == [["Drama"], []]
    first, second = frame.to_dict(orient="records")
    assert (first["original_language"], first["runtime"], first["vote_count"]) == ("fr", 104, 88)
    assert pd.isna(second["original_language"]) and pd.isna(second["runtime"])  # unknown, never a made-up 0


def test_rare_genres_are_pruned_and_unlabelled_movies_dropped():
    genre_lists = [["Drama"]] * 12 + [["Comedy", "Drama"]] * 10 + [["Western"]] * 2 + [["Drama", "Western"]]
    full, pruned, dropped = labels.binarize(range(25), genre_lists, min_count=5)
    assert full.classes == ["Comedy", "Drama"] and pruned == {"Western": 3}
    assert dropped == 2 and len(full.ids) == 23 and full.matrix.sum(axis=1).min() == 1


def test_merge_rule_uses_frequency_and_the_cooccurrence_graph():
    # A and B are frequent; C is frequent but stands apart; D is rarer but tied to A and B;
    # E is rare and isolated; F is below the frequency floor.
    rows = (
        [["A", "B"]] * 30
        + [["A", "D"]] * 8
        + [["B", "D"]] * 8
        + [["C"]] * 25
        + [["E"]] * 6
        + [["A"]] * 10
        + [["F"]] * 1
    )
    full, _, _ = labels.binarize(range(len(rows)), rows, min_count=1)
    merged, reasons, degree = labels.merge_into_others(full, n_labels=4, min_fraction=0.02)
    # Ranks (frequency, connectivity): A (4, 3), B (3, 4), C (2, 0), D (1, 2), E (0, 1).
    assert merged.classes == ["A", "B", "D", labels.OTHERS]
    assert list(reasons) == ["F", "E", "C"]
    assert reasons["F"].startswith("frequency 1.1% < 2%") and "rank" in reasons["C"]
    assert degree["E"] == 0 and degree["A"] > degree["D"] > 0
    others = merged.matrix[:, -1]
    has_merged = full.matrix[:, [full.classes.index(g) for g in reasons]].max(axis=1)
    assert (others == has_merged).all()
    kept = [full.classes.index(g) for g in merged.classes[:-1]]
    assert (merged.matrix[:, :-1] == full.matrix[:, kept]).all()


def test_merge_keeps_every_genre_and_adds_no_empty_others_when_there_are_few():
    full, _, _ = labels.binarize(range(4), [["A"], ["B"], ["A", "B"], ["B"]], min_count=1)
    merged, reasons, _ = labels.merge_into_others(full, n_labels=12, min_fraction=0.0)
    assert reasons == {} and merged.classes == ["A", "B"] and (merged.matrix == full.matrix).all()


def random_labels(n, k=6, seed=0):
    rng = np.random.default_rng(seed)
    matrix = (rng.random((n, k)) < 0.25).astype(np.uint8)
    matrix[matrix.sum(axis=1) == 0, 0] = 1
    return matrix


def test_splits_are_disjoint_stratified_and_cover_every_label():
    matrix = random_labels(600)
    current, history, newly = splits.assign_splits(np.arange(600), matrix, fractions=splits.SplitFractions(0.15, 0.15))
    assert newly == 600 and current["id"].is_unique and len(history) == 600
    sizes = current["split"].value_counts(normalize=True)
    assert abs(sizes["test"] - 0.15) < 0.03 and abs(sizes["validation"] - 0.15) < 0.03
    frame = pd.DataFrame(matrix, columns=list("abcdef")).assign(id=np.arange(600))
    counts = splits.split_label_counts(current, frame)
    assert (counts > 0).all().all()
    # Stratified: each genre's share in test is close to its share overall.
    share = counts["test"] / counts.sum(axis=1)
    assert share.between(0.10, 0.20).all()


def test_splits_are_stable_when_the_data_refreshes():
    matrix = random_labels(700, seed=1)
    first, history, _ = splits.assign_splits(np.arange(500), matrix[:500])
    # Refresh: 200 new movies, and movie 7 disappears.
    ids = np.array([i for i in range(700) if i != 7])
    second, history, newly = splits.assign_splits(ids, matrix[ids], history)
    assert newly == 200
    before = first.set_index("id")["split"]
    after = second.set_index("id")["split"]
    common = before.index.intersection(after.index)
    assert (before[common] == after[common]).all()
    assert set(second.loc[second["id"] >= 500, "split"]) == {"train", "validation", "test"}
    # Movie 7 comes back later: it gets its old split, not a new one.
    back, _, newly = splits.assign_splits(np.arange(700), matrix, history)
    assert newly == 0 and back.set_index("id").at[7, "split"] == before[7]


def test_a_small_batch_of_new_movies_is_assigned_by_a_seeded_hash():
    matrix = random_labels(505, seed=2)
    _, history, _ = splits.assign_splits(np.arange(500), matrix[:500])
    one, _, newly = splits.assign_splits(np.arange(505), matrix, history)
    again, _, _ = splits.assign_splits(np.arange(505), matrix, history)
    assert newly == 5 and one.equals(again)


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="fractions"):
        splits.SplitFractions(validation_fraction=0.6, test_fraction=0.5)


def test_eda_plots_are_readable_pngs_and_one_html_page(tmp_path):
    rows = [["Drama"], ["Comedy", "Drama"], ["Horror", "Thriller"], ["Comedy"], ["Thriller", "Drama"]] * 8
    movies = pd.DataFrame({"id": range(len(rows)), "overview_tokens": np.arange(len(rows)) + 5})
    full, _, _ = labels.binarize(movies["id"], rows, min_count=1)
    merged, _, _ = labels.merge_into_others(full, n_labels=3, min_fraction=0.0)
    paths = eda.write_eda_report(
        movies,
        full,
        merged,
        {"ok": 30, "no_poster": 8, "http_error": 1, "corrupt": 1},
        tmp_path,
        token_limits=(5, 300),
        source_label="test data",
    )
    assert set(paths) == set(eda.PLOTS) | {"html"}
    for name in eda.PLOTS:
        with Image.open(paths[name]) as image:
            image.verify()
        with Image.open(paths[name]) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 150
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(eda.PLOTS) and "test data" in page


def test_the_eda_page_counts_the_movies_its_genre_plots_count(tmp_path):
    rows = [["Drama"], ["Comedy", "Drama"], ["Horror"]] * 10 + [["Western"]] * 2  # Western: pruned
    movies = pd.DataFrame({"id": range(len(rows)), "overview_tokens": np.arange(len(rows)) + 5})
    result = labels.build_labels(movies["id"], rows, labels.LabelRules(min_genre_count=3))
    paths = eda.write_eda_report(
        movies,
        result.full,
        result.merged,
        {"ok": 32},
        tmp_path,
        token_limits=(5, 300),
        source_label="test data",
    )
    assert len(result.full.ids) == 30
    assert "32 clean movies; the genre plots count the 30 that have a genre" in paths["html"].read_text()


def test_heatmap_numbers_contrast_with_their_cell():
    viridis = matplotlib.colormaps["viridis"]
    assert eda._text_colour_on(viridis(0.0)) == "white" and eda._text_colour_on(viridis(1.0)) == "black"
    assert eda._text_colour_on((0.5, 0.5, 0.5, 1.0)) == "black"  # mid grey reads better in black


def test_pruning_follows_the_share_of_movies_as_well_as_the_count():
    rows = [["Drama"]] * 180 + [["Comedy"]] * 18 + [["TV Movie", "Drama"]] * 2
    result = labels.build_labels(range(200), rows, labels.LabelRules(min_genre_count=1, min_genre_fraction=0.015))
    assert result.pruned == {"TV Movie": 2} and result.full.classes == ["Comedy", "Drama"]
    result = labels.build_labels(range(200), rows, labels.LabelRules(min_genre_count=1, min_genre_fraction=0.0))
    assert result.pruned == {} and "TV Movie" in result.full.classes


def test_too_few_movies_for_two_genres_is_a_clear_error():
    with pytest.raises(ValueError, match="too few to learn genres"):
        labels.build_labels(range(12), [["Drama"]] * 11 + [["Comedy"]], labels.LabelRules(min_genre_count=10))
