"""scikit-learn's boosted trees are loaded before PyTorch in any process that imports torch through the
project (see genre_pipeline/openmp.py: otherwise the stacker's trees split across two OpenMP runtimes)."""

import subprocess
import sys

import pytest

TORCH_IMPORTERS = [
    "genre_pipeline.models.heads",
    "genre_pipeline.models.encoders.text",
    "genre_pipeline.models.encoders.image",
    "genre_pipeline.training.loop",
    "genre_pipeline.training.finetune",
]

ORDER = """
import importlib, sys
importlib.import_module(sys.argv[1])
names = list(sys.modules)
print(names.index("sklearn.ensemble._hist_gradient_boosting.histogram") < names.index("torch"))
"""


@pytest.mark.parametrize("module", TORCH_IMPORTERS)
def test_the_boosted_trees_load_before_torch(module):
    result = subprocess.run([sys.executable, "-c", ORDER, module], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
