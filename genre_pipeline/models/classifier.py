"""The deployable genre classifier: members, an optional stacker and tuned thresholds, saved to and
loaded from one folder. Encoders are referenced by name (``EncoderRef``); only fine-tuned encoder
weights travel inside the folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from genre_pipeline.models.encoders import EncoderRef
from genre_pipeline.models.members import MemberInputs, load_member
from genre_pipeline.models.stacker import Stacker
from genre_pipeline.models.thresholds import apply_thresholds

CLASSIFIER_FILE = "classifier.json"


@dataclasses.dataclass
class GenreClassifier:
    """``members`` by name; with a ``stacker`` the members' probabilities are combined, without one
    the classifier is its single member."""

    name: str
    classes: list[str]
    thresholds: np.ndarray
    members: dict
    stacker: Stacker | None = None

    def __post_init__(self):
        if self.stacker is None and len(self.members) != 1:
            raise ValueError("a classifier without a stacker has exactly one member")

    @property
    def encoders(self) -> list[EncoderRef]:
        seen = {}
        for member in self.members.values():
            for ref in member.encoders:
                seen.setdefault(ref.key, ref)
        return list(seen.values())

    @property
    def uses_posters(self) -> bool:
        return any(ref.modality == "image" for ref in self.encoders)

    @property
    def reads_titles(self) -> bool:
        return any(getattr(member, "with_title", False) for member in self.members.values())

    @property
    def reads_metadata(self) -> bool:
        return self.stacker is not None and self.stacker.metadata is not None

    def probabilities(self, inputs: MemberInputs) -> np.ndarray:
        if self.stacker is None:
            (member,) = self.members.values()
            return member.probabilities(inputs)
        return self.stacker.probabilities(
            {name: member.probabilities(inputs) for name, member in self.members.items()}, inputs
        )

    def decisions(self, probabilities: np.ndarray) -> np.ndarray:
        return apply_thresholds(probabilities, self.thresholds)

    def logged_metadata(self) -> dict:
        """What the logged model's MLflow metadata carries (``movie.MODEL_METADATA_KEYS``)."""
        reads = ["text"] + ["title"] * self.reads_titles + ["metadata"] * self.reads_metadata
        return {
            "classes": list(self.classes),
            "thresholds": [float(t) for t in self.thresholds],
            "reads": reads + ["poster"] * self.uses_posters,
        }

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, member in self.members.items():
            member.save(directory / "members" / name)
        if self.stacker is not None:
            self.stacker.save(directory / "stacker")
        spec = {
            "name": self.name,
            "classes": self.classes,
            "thresholds": self.thresholds.tolist(),
            "members": list(self.members),
            "stacker": self.stacker is not None,
        }
        (directory / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> "GenreClassifier":
        directory = Path(directory)
        spec = json.loads((directory / CLASSIFIER_FILE).read_text())
        members = {name: load_member(directory / "members" / name) for name in spec["members"]}
        stacker = Stacker.load(directory / "stacker") if spec["stacker"] else None
        return cls(spec["name"], spec["classes"], np.asarray(spec["thresholds"]), members, stacker)
