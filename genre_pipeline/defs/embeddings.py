"""The embedding assets: frozen text and poster encoders over the clean movies, cached per content so
that a refresh encodes only new or changed texts and posters."""

import dagster as dg
import pandas as pd
from pydantic import Field

from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import markdown_table, progress_logger
from genre_pipeline.defs.dataset import movies_clean
from genre_pipeline.defs.execution import GPU_STEP_TAGS
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models.encoders import EncoderUnavailable, cache
from genre_pipeline.store import frame_fingerprint


class EmbeddingConfig(dg.Config):
    batch_size: int = Field(default=64, description="Texts per batch on PyTorch; posters use half as many.")


def failing_clearly(call):
    """``call()``; an encoder whose weights cannot load fails the step at once (a retry cannot help)."""
    try:
        return call()
    except EncoderUnavailable as error:
        raise dg.Failure(str(error), allow_retries=False) from None


# Both run on a GPU worker where there is one.
embedding_asset = dg.asset(
    group_name="models",
    deps=[movies_clean],
    automation_condition=ON_UPSTREAM_DATA_CHANGE,
    kinds={"pytorch"},
    op_tags=GPU_STEP_TAGS,
)


def _embedding_result(per_encoder: list[dict]) -> dg.MaterializeResult:
    """One encoder's figures as they are; several encoders' side by side in a table."""
    version = "".join(frame_fingerprint(pd.DataFrame({"k": m.pop("keys")})) for m in per_encoder)
    metadata = (
        dict(per_encoder[0]) if len(per_encoder) == 1 else {"encoders": markdown_table(pd.DataFrame(per_encoder))}
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def _refresh_embeddings(context, storage, training, ref, batch_size: int, ids: list, keys: list, inputs: list) -> dict:
    store = storage.store
    return failing_clearly(
        lambda: cache.refresh(
            store.embeddings_file(ref.modality, ref.name, ref.backend),
            ref,
            device=training.resolved_device(),
            batch_size=batch_size,
            ids=ids,
            keys=keys,
            inputs=inputs,
            progress=progress_logger(context, f"{ref.modality} embeddings ({ref.name}, {ref.backend})"),
        )
    )


@embedding_asset
def text_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen text-encoder embeddings of each movie's model text, for every configured text encoder;
    only new or changed texts are encoded."""
    movies = storage.store.read_table(storage.store.movies_clean_file)
    texts = movies["text"].tolist()
    keys = [cache.content_key(t) for t in texts]
    ids = movies["id"].tolist()
    return _embedding_result(
        [
            _refresh_embeddings(context, storage, training, ref, config.batch_size, ids, keys, texts)
            for ref in training.encoder_refs()[0]
        ]
    )


@embedding_asset
def poster_embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
) -> dg.MaterializeResult:
    """Frozen ImageNet features of every verified poster; only new or changed posters are encoded."""
    store = storage.store
    movies = store.read_table(store.movies_clean_file)
    with_poster = movies[movies["poster_status"] == poster_files.OK]
    files = [store.root / f for f in with_poster["poster_file"]]
    keys = [cache.content_key(f.read_bytes()) for f in files]
    ref = training.encoder_refs()[1]
    return _embedding_result(
        [
            _refresh_embeddings(
                context, storage, training, ref, config.batch_size // 2, with_poster["id"].tolist(), keys, files
            )
        ]
    )
