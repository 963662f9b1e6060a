"""The import direction README's architecture section describes: each package imports only the ones
below it, only the Dagster wiring imports Dagster, and what serves the model (the server, the CLI's
predict and evaluate, the champion package) imports no training code. The last tests break a copy of the tree
on purpose and show that each rule then fails."""

import shutil
from pathlib import Path

import pytest

from genre_pipeline.training.fingerprint import imported_modules

PACKAGE = Path(__file__).resolve().parents[1] / "genre_pipeline"

# Which of the project's packages (or top-level modules) each one may import.
MAY_IMPORT = {
    "files": set(),
    "images": set(),
    "options": set(),
    "openmp": set(),
    "tmdb": {"files"},
    "settings": {"tmdb", "store"},
    "store": {"files"},
    "tracking": set(),
    "ingestion": {"files", "images", "options", "tmdb", "store"},
    "dataset": {"files", "options", "ingestion"},
    "models": {"files", "images", "openmp", "options", "tmdb", "settings", "store", "ingestion", "dataset"},
    "training": {"files", "openmp", "options", "settings", "store", "tracking", "ingestion", "dataset", "models"},
    "champion": {"options", "tmdb", "settings", "store", "tracking", "ingestion", "dataset", "models"},
    "monitoring": {"options", "store", "ingestion", "dataset", "models", "champion"},
    "serving": {"models", "champion", "images", "settings"},
    "cluster": {"settings"},
    "cli": {"settings", "tmdb", "store", "models", "champion", "serving", "cluster"},
    "defs": {
        *("files", "tmdb", "settings", "store", "tracking", "ingestion", "dataset"),
        *("models", "champion", "training", "monitoring"),
    },
    "definitions": {"defs", "settings"},
    "refresh": {"definitions", "files", "settings", "tmdb"},
}
MAY_IMPORT_DAGSTER = {"defs", "definitions", "refresh"}
# Modules that serve a registered model, and the champion's lifecycle package: nothing they import,
# however indirectly, may be training code.
SERVING_ENTRIES = ("serving.app", "cli")
NO_TRAINING_PACKAGE = "champion"
TRAINING = "training"


def unit_of(module: str) -> str:
    """The package (or top-level module) of a dotted module name below genre_pipeline."""
    return module.split(".")[0]


def module_of(path: Path, package: Path) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(package: Path) -> dict[str, set[str]]:
    """module -> the project's modules it imports (names relative to genre_pipeline)."""
    graph = {}
    for path in sorted(package.rglob("*.py")):
        imports = imported_modules(path)
        graph[module_of(path, package)] = {
            n.removeprefix("genre_pipeline.") for n in imports if n.startswith("genre_pipeline.")
        }
        graph[module_of(path, package)] |= {f"dagster:{n}" for n in imports if n.split(".")[0] == "dagster"}
    return graph


def violations(package: Path) -> list[str]:
    """Every broken rule in the tree at ``package``, as a sentence each."""
    graph = project_imports(package)
    found = []
    for module, imports in sorted(graph.items()):
        if not module:
            continue
        unit = unit_of(module)
        if unit not in MAY_IMPORT:
            found.append(f"{module}: the package {unit!r} has no rule")
            continue
        for name in sorted(imports):
            if name.startswith("dagster:"):
                if unit not in MAY_IMPORT_DAGSTER:
                    found.append(f"{module} imports dagster")
            elif unit_of(name) != unit and unit_of(name) not in MAY_IMPORT[unit]:
                found.append(f"{module} may not import {name}")
    for entry in [*SERVING_ENTRIES, *sorted(m for m in graph if unit_of(m) == NO_TRAINING_PACKAGE)]:
        for reached in sorted(_reachable(graph, entry)):
            if unit_of(reached) == TRAINING:
                found.append(f"{entry} reaches training code: {reached}")
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The project's modules ``start`` imports directly or through others (a name may be a module or a
    name inside one: both count)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for name in graph.get(module, ()):
            if name.startswith("dagster:"):
                continue
            for candidate in (name, name.rpartition(".")[0]):
                if candidate in graph and candidate not in seen:
                    seen.add(candidate)
                    todo.append(candidate)
    return seen


def test_the_tree_keeps_every_rule():
    assert violations(PACKAGE) == []


def test_every_package_has_a_rule():
    units = {unit_of(m) for m in project_imports(PACKAGE) if m}
    assert units == set(MAY_IMPORT)


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    return Path(shutil.copytree(PACKAGE, tmp_path / "genre_pipeline", ignore=shutil.ignore_patterns("__pycache__")))


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


@pytest.mark.parametrize(
    "file, line, broken",
    [
        ("serving/app.py", "from genre_pipeline.training import runs", "serving.app may not import training.runs"),
        ("champion/registry.py", "import dagster as dg", "champion.registry imports dagster"),
        (
            "training/runs.py",
            "from genre_pipeline.champion import promotion",
            "training.runs may not import champion.promotion",
        ),
        ("dataset/cleaning.py", "from genre_pipeline.models import movie", "dataset.cleaning may not import models"),
        (
            "champion/predictor.py",
            "from genre_pipeline.training.loop import set_seeds",
            "champion.predictor may not import training.loop",
        ),
    ],
)
def test_a_forbidden_import_in_a_copy_of_the_tree_fails_the_rules(tree_copy, file, line, broken):
    _append(tree_copy / file, line)
    assert any(v.startswith(broken) for v in violations(tree_copy)), violations(tree_copy)


def test_training_code_reached_indirectly_from_serving_fails(tree_copy):
    """Allowed imports can still chain into training: serving -> models -> (a function-level import of)
    training. The chain is followed through every module."""
    _append(tree_copy / "models/metrics.py", "def _lazy():\n    from genre_pipeline.training import loop")
    found = violations(tree_copy)
    assert "models.metrics may not import training.loop" in found
    assert any(v.startswith("serving.app reaches training code") for v in found)
    assert any(v.startswith("cli reaches training code") for v in found)


def test_a_new_package_without_a_rule_fails(tree_copy):
    (tree_copy / "reports").mkdir()
    (tree_copy / "reports" / "__init__.py").write_text('"""New."""\n')
    assert "reports: the package 'reports' has no rule" in violations(tree_copy)
