"""How each model trains: every setting declared once, as a plain frozen dataclass the training code
reads; the Dagster run config is made from these (``defs.common.config_from_dataclass``)."""

from __future__ import annotations

import dataclasses

from genre_pipeline.dataset.labels import LabelSetName
from genre_pipeline.models.encoders import EncoderRef
from genre_pipeline.options import described

# The fusion model's two heads: concatenated features, or a gated multimodal unit.
FUSION_KINDS = ("concat_fusion", "gmu_fusion")

_PATIENCE = "Stop after this many epochs without a better validation macro-F1."


@dataclasses.dataclass(frozen=True)
class HeadTraining:
    """What training a head shares, on cached embeddings or with its encoders fine-tuned."""

    weight_decay: float = described(1e-2, "AdamW weight decay.")
    max_pos_weight: float = described(10.0, "Cap of the per-genre positive weight of the BCE loss.")
    modality_dropout: float = described(0.15, "Fusion: hide the poster of this share of training movies.")
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class TrainingConfig(HeadTraining):
    """Training a head on cached embeddings of frozen encoders."""

    max_epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 1e-3
    patience: int = described(8, _PATIENCE)


@dataclasses.dataclass(frozen=True)
class FineTuneConfig(HeadTraining):
    """Fine-tuning the encoders with a head (when the training resource fine-tunes)."""

    max_epochs: int = 6
    batch_size: int = 32
    encoder_learning_rate: float = described(2e-5, "AdamW rate of the encoders.")
    head_learning_rate: float = described(1e-3, "AdamW rate of the head.")
    warmup_share: float = described(0.06, "Share of all steps of linear warm-up before the cosine decay.")
    patience: int = described(2, _PATIENCE)
    num_workers: int = described(2, "DataLoader processes decoding and augmenting posters (0 on small CPUs).")
    fusion_heads: str = described(
        "both",
        "The fusion model's heads to fine-tune: concat_fusion, gmu_fusion, or both (twice the cost) and keep "
        "the better on validation.",
    )

    def __post_init__(self):
        if self.fusion_heads not in (*FUSION_KINDS, "both"):
            raise ValueError(f"fusion_heads is {self.fusion_heads!r}: choose one of {', '.join(FUSION_KINDS)} or both")

    @property
    def fusion_kinds(self) -> tuple[str, ...]:
        return FUSION_KINDS if self.fusion_heads == "both" else (self.fusion_heads,)


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """The TF-IDF baseline."""

    C: float = described(4.0, "Inverse regularization of the logistic regressions.")  # noqa: N815 - sklearn's name
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """How the stacked classifier is built."""

    folds: int = described(5, "Cross-fitting folds of the train split for the members' out-of-fold probabilities.")
    tfidf_C: float = described(4.0, "Inverse regularization of the TF-IDF members' logistic regressions.")  # noqa: N815
    hide_movies: float = described(0.10, "Stacker training: share of movies shown without any metadata.")
    hide_fields: float = described(0.05, "Stacker training: share of the other metadata values hidden one by one.")
    stacker_bags: int = described(5, "Stacker: bags of boosted trees, fitted with different seeds and averaged.")
    neighbours_max_reference: int = described(
        20_000, "Neighbour vote: most train movies it searches (a seeded sample beyond), bounding its time and size."
    )
    seed: int = 42


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """What every model of a run shares, as the training resource resolves it: the label set, the
    encoders (with the backend they embed on), the device, whether heads fine-tune their encoders,
    and the MLflow store."""

    label_set: LabelSetName
    text_encoders: tuple[EncoderRef, ...]
    image_encoder: EncoderRef
    device: str
    fine_tune: bool
    tracking_uri: str
    experiment: str
    temporal_test_years: int = 2  # 0: no temporal evaluation
    temporal_min_movies: int = 100  # fewer scorable movies on either side: the temporal figure is not measured
    retrain: bool = False  # train even when the data, config and code are those of the model trained last

    def head_encoders(self, kind: str) -> tuple[EncoderRef | None, EncoderRef | None]:
        """The encoders a head of this kind reads: the first text encoder unless it is the image head,
        the image encoder unless it is the text head."""
        return (
            self.text_encoders[0] if kind != "image" else None,
            self.image_encoder if kind != "text" else None,
        )

    def run_params(self) -> dict:
        """What every model's MLflow run records of the setup."""
        return {
            "label_set": self.label_set,
            "text_encoders": [ref.name for ref in self.text_encoders],
            "image_encoder": self.image_encoder.name,
            "encoder_backend": self.image_encoder.backend,
            "device": self.device,
        }
