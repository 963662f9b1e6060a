"""The original study's exploratory plots as PNG files, and one self-contained HTML page with all of them."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from genre_pipeline.dataset.labels import LabelSet, connectivity, cooccurrence  # noqa: E402
from genre_pipeline.files import png_base64  # noqa: E402

PLOTS = {
    "genre_frequency": "Genre frequency",
    "cooccurrence_full": "Genre co-occurrence, before merging",
    "cooccurrence_merged": "Genre co-occurrence, after merging into Others",
    "labels_per_movie": "Labels per movie",
    "genre_pca": "PCA of the genre vectors",
    "overview_tokens": "Overview length in tokens",
    "cooccurrence_network": "Genre co-occurrence network",
    "poster_status": "Poster status",
}


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _frequency(labels: LabelSet, path: Path) -> Path:
    counts = pd.Series(labels.counts()).sort_values()
    figure, axis = plt.subplots(figsize=(7, 0.32 * len(counts) + 1))
    axis.barh(counts.index, counts.values, color="#4C72B0")
    for y, value in enumerate(counts.values):
        axis.text(value, y, f" {value}", va="center", fontsize=8)
    axis.set_xlabel("movies")
    axis.set_title(f"Genre frequency ({len(labels.ids)} movies with a genre of the label set)")
    return _save(figure, path)


def _heatmap(labels: LabelSet, path: Path, title: str) -> Path:
    counts = cooccurrence(labels)
    size = 0.45 * len(counts) + 2
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(counts.values, cmap="viridis")
    axis.set_xticks(range(len(counts)), counts.columns, rotation=90, fontsize=8)
    axis.set_yticks(range(len(counts)), counts.index, fontsize=8)
    if len(counts) <= 20:
        cell_colours = image.cmap(image.norm(counts.values))
        for i in range(len(counts)):
            for j in range(len(counts)):
                axis.text(
                    j,
                    i,
                    str(counts.values[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=_text_colour_on(cell_colours[i, j]),
                )
    figure.colorbar(image, ax=axis, shrink=0.8, label="movies with both genres")
    axis.set_title(title)
    return _save(figure, path)


def _text_colour_on(rgba) -> str:
    """Black on light cells, white on dark ones, by the cell colour's relative luminance (WCAG)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    # Contrast with black (L + 0.05) / 0.05 beats contrast with white 1.05 / (L + 0.05) above ~0.18.
    return "black" if luminance > 0.179 else "white"


def _labels_per_movie(labels: LabelSet, path: Path) -> Path:
    per_movie = labels.matrix.sum(axis=1)
    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.arange(per_movie.min(), per_movie.max() + 2) - 0.5
    axis.hist(per_movie, bins=bins, color="#55A868", rwidth=0.9)
    mean = per_movie.mean()
    axis.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.2f}")
    axis.set_xlabel("genres per movie")
    axis.set_ylabel("movies")
    axis.legend()
    axis.set_title("Labels per movie")
    return _save(figure, path)


def _pca(labels: LabelSet, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 5.5))
    if len(labels.ids) >= 3 and len(labels.classes) >= 2:
        pca = PCA(n_components=2, random_state=0)
        points = pca.fit_transform(labels.matrix.astype(float))
        points += np.random.default_rng(0).normal(0, 0.03, points.shape)  # genre vectors repeat: jitter shows density
        frequency = labels.matrix.sum(axis=0)
        # Colour each movie by its rarest genre, the most telling one.
        rarest = np.where(labels.matrix > 0, frequency[None, :], np.inf).argmin(axis=1)
        colours = plt.get_cmap("tab20")(np.arange(len(labels.classes)) % 20)
        for k, genre in enumerate(labels.classes):
            mask = rarest == k
            if mask.any():
                axis.scatter(points[mask, 0], points[mask, 1], s=6, color=colours[k], label=genre, alpha=0.6)
        ratio = pca.explained_variance_ratio_
        axis.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
        axis.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
        axis.legend(fontsize=6, markerscale=2, ncol=2, loc="best")
    axis.set_title("PCA of the genre vectors (colour: rarest genre)")
    return _save(figure, path)


def _tokens(movies: pd.DataFrame, path: Path, limits: tuple[int, int]) -> Path:
    tokens = movies["overview_tokens"]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    axis.hist(tokens, bins=40, color="#8172B2")
    for limit in limits:
        axis.axvline(limit, color="red", linestyle=":", label=None)
    axis.axvline(tokens.median(), color="black", linestyle="--", label=f"median {tokens.median():.0f}")
    axis.set_xlabel(f"tokens (red: the filter's limits {limits[0]} and {limits[1]})")
    axis.set_ylabel("movies")
    axis.legend()
    axis.set_title("Overview length")
    return _save(figure, path)


def _network(labels: LabelSet, path: Path) -> Path:
    counts = cooccurrence(labels)
    graph = nx.Graph()
    for genre in labels.classes:
        graph.add_node(genre, size=int(counts.at[genre, genre]))
    for i, a in enumerate(labels.classes):
        for b in labels.classes[i + 1 :]:
            both = counts.at[a, b]
            if both:
                graph.add_edge(a, b, weight=both / (counts.at[a, a] + counts.at[b, b] - both))
    figure, axis = plt.subplots(figsize=(8, 7))
    layout = nx.spring_layout(graph, seed=0, weight="weight")
    weights = np.array([graph.edges[e]["weight"] for e in graph.edges]) if graph.edges else np.array([])
    nx.draw_networkx_edges(graph, layout, ax=axis, width=1 + 12 * weights, alpha=0.35)
    sizes = np.array([graph.nodes[n]["size"] for n in graph.nodes], dtype=float)
    degree = connectivity(labels)
    nx.draw_networkx_nodes(
        graph,
        layout,
        ax=axis,
        node_size=200 + 2500 * sizes / max(sizes.max(), 1),
        node_color=[degree[n] for n in graph.nodes],
        cmap="coolwarm",
    )
    # Labels on a light box: the node colours run from dark blue to dark red.
    label_box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "boxstyle": "round,pad=0.2"}
    nx.draw_networkx_labels(graph, layout, ax=axis, font_size=8, bbox=label_box)
    axis.set_title("Genre co-occurrence network (edge: Jaccard overlap; colour: weighted degree)")
    axis.axis("off")
    return _save(figure, path)


def _poster_status(status_counts: dict[str, int], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 3.5))
    names, values = list(status_counts), list(status_counts.values())
    axis.bar(names, values, color=["#55A868", "#8C8C8C", "#C44E52", "#DD8452", "#937860"][: len(names)])
    total = sum(values) or 1
    for x, value in enumerate(values):
        axis.text(x, value, f"{value}\n{value / total:.0%}", ha="center", va="bottom", fontsize=8)
    axis.set_ylabel("movies")
    axis.set_title("Poster status")
    axis.margins(y=0.2)
    return _save(figure, path)


def write_eda_report(
    movies: pd.DataFrame,
    full: LabelSet,
    merged: LabelSet,
    poster_status_counts: dict[str, int],
    out_dir: Path | str,
    *,
    token_limits: tuple[int, int],
    source_label: str,
) -> dict[str, Path]:
    """Write every plot as PNG and ``eda_report.html`` embedding them; return name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "genre_frequency": _frequency(full, out_dir / "genre_frequency.png"),
        "cooccurrence_full": _heatmap(full, out_dir / "cooccurrence_full.png", PLOTS["cooccurrence_full"]),
        "cooccurrence_merged": _heatmap(merged, out_dir / "cooccurrence_merged.png", PLOTS["cooccurrence_merged"]),
        "labels_per_movie": _labels_per_movie(full, out_dir / "labels_per_movie.png"),
        "genre_pca": _pca(full, out_dir / "genre_pca.png"),
        "overview_tokens": _tokens(movies, out_dir / "overview_tokens.png", token_limits),
        "cooccurrence_network": _network(full, out_dir / "cooccurrence_network.png"),
        "poster_status": _poster_status(poster_status_counts, out_dir / "poster_status.png"),
    }
    sections = "\n".join(
        f"<section><h2>{html.escape(PLOTS[name])}</h2>"
        f"<img alt='{html.escape(PLOTS[name])}' src='data:image/png;base64,{png_base64(path)}'></section>"
        for name, path in paths.items()
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>genre_pipeline EDA</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}</style></head>"
        f"<body><h1>genre_pipeline: exploratory data analysis</h1><p>Source: {html.escape(source_label)}. "
        f"{len(movies)} clean movies; the genre plots count the {len(full.ids)} that have a genre of the label "
        f"set ({len(movies) - len(full.ids)} have none of its genres). "
        f"{len(full.classes)} genres before merging, {len(merged.classes)} after.</p>"
        f"{sections}</body></html>"
    )
    paths["html"] = out_dir / "eda_report.html"
    paths["html"].write_text(page, encoding="utf-8")
    return paths
