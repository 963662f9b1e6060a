"""The embedding assets: frozen text and poster encoders over the clean movies, cached per content so
that a refresh encodes only new or changed texts and posters."""

import dataclasses
import os
import socket
import warnings

import dagster as dg
import pandas as pd
from pydantic import Field

from genre_pipeline import settings
from genre_pipeline.defs.automation import ON_UPSTREAM_DATA_CHANGE
from genre_pipeline.defs.common import failing_clearly, markdown_table, progress_logger
from genre_pipeline.defs.execution import GPU_STEP_TAGS
from genre_pipeline.defs.resources import StorageResource, TrainingResource
from genre_pipeline.files import content_key
from genre_pipeline.ingestion import posters as poster_files
from genre_pipeline.models.encoders import EncoderRef, cache
from genre_pipeline.store import frame_fingerprint


class EmbeddingConfig(dg.Config):
    batch_size: int = Field(default=64, description="Texts per batch on PyTorch; posters use half as many.")


@dataclasses.dataclass
class EncoderWork:
    """One encoder's inputs for an embedding asset: every movie's id, content key and input."""

    ref: EncoderRef
    batch_size: int
    ids: list
    keys: list
    inputs: list


def text_work(storage: StorageResource, training: TrainingResource, batch_size: int) -> list[EncoderWork]:
    movies = storage.store.read_table(storage.store.movies_clean_file)
    texts = movies["text"].tolist()
    keys = [content_key(t) for t in texts]
    ids = movies["id"].tolist()
    return [EncoderWork(ref, batch_size, ids, keys, texts) for ref in training.encoder_refs()[0]]


def poster_work(storage: StorageResource, training: TrainingResource, batch_size: int) -> list[EncoderWork]:
    store = storage.store
    movies = store.read_table(store.movies_clean_file)
    with_poster = movies[movies["poster_status"] == poster_files.OK]
    files = [store.root / f for f in with_poster["poster_file"]]
    # The hash ingestion stored; a data set from before it kept one hashes the file.
    stored = with_poster.reindex(columns=["poster_sha1"])["poster_sha1"]
    keys = [h if isinstance(h, str) else content_key(f.read_bytes()) for h, f in zip(stored, files)]
    # Posters take more memory per input than texts.
    return [EncoderWork(training.encoder_refs()[1], batch_size // 2, with_poster["id"].tolist(), keys, files)]


def _embedding_metadata(per_encoder: list[dict]) -> tuple[dict, dg.DataVersion]:
    """One encoder's figures as they are, several encoders' side by side in a table; each shard's
    figures (where it ran, what it encoded) in a table; the version of the embedded contents."""
    version = "".join(frame_fingerprint(pd.DataFrame({"k": m.pop("keys")})) for m in per_encoder)
    shards = pd.DataFrame([{"encoder": m["encoder"], **s} for m in per_encoder for s in m.pop("shards")])
    metadata = (
        dict(per_encoder[0]) if len(per_encoder) == 1 else {"encoders": markdown_table(pd.DataFrame(per_encoder))}
    )
    if len(shards):
        metadata["shards"] = markdown_table(shards[["encoder", "shard", "worker", "computed", "encode_s"]])
        metadata["workers"] = sorted(set(shards.loc[shards["computed"] > 0, "worker"]))
    return metadata, dg.DataVersion(version)


def sharded_embedding_asset(
    name: str, modality: str, work, description: str, shards: int = settings.embedding_shards()
) -> dg.AssetsDefinition:
    """An embedding asset as ``shards`` steps that each encode their share of the movies the cache
    lacks (a Celery or Kubernetes deployment runs them on different workers, on the GPU queue), then one
    step that merges their files into the cached embeddings. ``work(storage, training, batch_size)``: what
    each encoder embeds. The shards' steps find their share from the same files, so nothing passes
    between steps but their order."""

    def store_of(storage: StorageResource, w: EncoderWork):
        return storage.store.embeddings_file(modality, w.ref.name, w.ref.backend)

    def options(context, training: TrainingResource, w: EncoderWork) -> dict:
        label = f"{modality} embeddings ({w.ref.name}, {w.ref.backend})"
        return dict(
            device=training.resolved_device(),
            batch_size=w.batch_size,
            ids=w.ids,
            keys=w.keys,
            inputs=w.inputs,
            progress=progress_logger(context, label),
        )

    def shard_op(shard: int) -> dg.OpDefinition:
        @dg.op(
            name=f"{name}_shard_{shard}",
            ins={"movies_clean": dg.In(dg.Nothing)},
            out=dg.Out(dg.Nothing),
            tags=GPU_STEP_TAGS,
        )
        def encode_shard(
            context: dg.OpExecutionContext,
            config: EmbeddingConfig,
            storage: StorageResource,
            training: TrainingResource,
        ) -> None:
            worker = f"{socket.gethostname()}:{os.getpid()}"  # the process: Celery workers share a host here
            for w in work(storage, training, config.batch_size):
                figures = failing_clearly(
                    lambda w=w: cache.refresh_shard(
                        store_of(storage, w),
                        w.ref,
                        shard=shard,
                        shards=shards,
                        worker=worker,
                        **options(context, training, w),
                    ),
                    storage.store,
                )
                context.log.info(f"{name} shard {shard} on {worker}: {w.ref.name} {figures}")

        return encode_shard

    @dg.op(name=f"{name}_merge", ins={f"shard_{n}": dg.In(dg.Nothing) for n in range(shards)}, out=dg.Out(dg.Nothing))
    def merge_shards(
        context: dg.OpExecutionContext, config: EmbeddingConfig, storage: StorageResource, training: TrainingResource
    ):
        per_encoder = [
            failing_clearly(
                lambda w=w: cache.merge_shards(
                    store_of(storage, w), w.ref, shards=shards, **options(context, training, w)
                ),
                storage.store,
            )
            for w in work(storage, training, config.batch_size)
        ]
        metadata, version = _embedding_metadata(per_encoder)
        with warnings.catch_warnings():  # an Output's data version is a beta parameter; an asset's is not
            warnings.simplefilter("ignore", dg.BetaWarning)
            return dg.Output(None, metadata=metadata, data_version=version)

    shard_ops = [shard_op(n) for n in range(shards)]
    op_names = [op.name for op in shard_ops] + [merge_shards.name]

    def same_config_for_every_step(config: EmbeddingConfig) -> dict:
        return {op: {"config": dict(config)} for op in op_names}

    @dg.graph_asset(
        name=name,
        description=description,
        group_name="models",
        ins={"movies_clean": dg.AssetIn(dagster_type=dg.Nothing)},
        config=dg.ConfigMapping(config_fn=same_config_for_every_step),
        automation_condition=ON_UPSTREAM_DATA_CHANGE,
        kinds={"pytorch"},
    )
    def embedding_asset(movies_clean):
        return merge_shards(**{f"shard_{n}": op(movies_clean) for n, op in enumerate(shard_ops)})

    return embedding_asset


text_embeddings = sharded_embedding_asset(
    "text_embeddings",
    "text",
    text_work,
    "Frozen text-encoder embeddings of each movie's model text, for every configured text encoder; only "
    "new or changed texts are encoded, in shards that can run on different workers.",
)

poster_embeddings = sharded_embedding_asset(
    "poster_embeddings",
    "image",
    poster_work,
    "Frozen ImageNet features of every verified poster; only new or changed posters are encoded, in shards "
    "that can run on different workers.",
)
