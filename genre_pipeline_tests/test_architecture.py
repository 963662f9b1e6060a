"""The import direction README's architecture section describes: each package imports only the ones
below it, and only the Dagster wiring imports Dagster."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "genre_pipeline"

# Which of the project's packages (or top-level modules) each one may import.
MAY_IMPORT = {
    "files": set(),
    "tmdb": {"files"},
    "settings": {"tmdb", "store"},
    "store": {"files"},
    "ingestion": {"files", "tmdb", "store"},
    "dataset": {"files", "ingestion"},
    "models": {"files", "tmdb", "settings", "store", "ingestion", "dataset"},
    "serving": {"models", "dataset", "ingestion"},
    "cluster": {"settings"},
    "cli": {"settings", "tmdb", "store", "models", "serving", "cluster"},
    "defs": {"files", "tmdb", "settings", "store", "ingestion", "dataset", "models"},
    "definitions": {"defs", "settings"},
}
MAY_IMPORT_DAGSTER = {"defs", "definitions"}


def unit_of(path: Path) -> str:
    """The package (or top-level module) a source file belongs to."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_package_has_a_rule():
    assert {unit_of(p) for p in SOURCES} == set(MAY_IMPORT)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    unit = unit_of(path)
    imports = imported_modules(path)
    project = {name.split(".")[1] for name in imports if name.startswith("genre_pipeline.")} - {unit}
    assert project <= MAY_IMPORT[unit], f"{unit} may not import {sorted(project - MAY_IMPORT[unit])}"
    if unit not in MAY_IMPORT_DAGSTER:
        assert not {name for name in imports if name.split(".")[0] == "dagster"}, f"{unit} imports dagster"


def test_the_rule_catches_a_plain_module_that_imports_dagster(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("import dagster as dg\nfrom genre_pipeline.defs.resources import StorageResource\n")
    imports = imported_modules(stray)
    assert "dagster" in imports and "genre_pipeline.defs.resources" in imports
