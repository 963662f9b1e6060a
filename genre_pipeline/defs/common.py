"""Helpers the asset modules share: metadata tables and images, progress logs, clear step failures."""

import dataclasses
import typing
from pathlib import Path

import dagster as dg
import pandas as pd
import pydantic

from genre_pipeline.files import out_of_space, out_of_space_message, png_base64
from genre_pipeline.models.encoders import EncoderUnavailable
from genre_pipeline.store import DataStore


def markdown_table(frame: pd.DataFrame, rows: int | None = 20) -> dg.MetadataValue:
    """A table for the UI: the first ``rows`` rows (all when None), saying so when some are left out."""
    shown = frame if rows is None else frame.head(rows)
    note = f"First {len(shown)} of {len(frame)} rows.\n\n" if len(shown) < len(frame) else ""
    return dg.MetadataValue.md(note + shown.to_markdown(index=False, floatfmt=".4f"))


def markdown_images(images: dict[str, Path]) -> dg.MetadataValue:
    """PNG files shown inline in the UI, each under its title."""
    return dg.MetadataValue.md(
        "\n\n".join(
            f"### {title}\n![{title}](data:image/png;base64,{png_base64(path)})" for title, path in images.items()
        )
    )


def progress_logger(context: dg.AssetExecutionContext, label: str, steps: int = 10):
    """A progress callback (done, total) that logs at each ``1/steps`` of the way, whatever the increments."""
    last_step = -1

    def log(done: int, total: int) -> None:
        nonlocal last_step
        step = done * steps // max(total, 1)
        if step > last_step:
            last_step = step
            context.log.info(f"{label}: {done}/{total}")

    return log


def config_from_dataclass(cls, name: str, **nested: type[dg.Config]) -> type[dg.Config]:
    """A Dagster Config with the fields, defaults and descriptions (``field(metadata={"description":
    ...})``) of a plain dataclass, so that a setting is declared once, where the code using it lives;
    ``nested`` adds sections that are Configs themselves. ``to_dataclass`` turns the run's config
    back into the dataclass."""
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: (hints[f.name], pydantic.Field(default=f.default, description=f.metadata.get("description")))
        for f in dataclasses.fields(cls)
    }
    fields.update({key: (section, pydantic.Field(default_factory=section)) for key, section in nested.items()})
    return pydantic.create_model(name, __base__=dg.Config, __doc__=cls.__doc__, **fields)


def to_dataclass(cls, config: dg.Config):
    """The dataclass ``cls`` from the run's config (built by config_from_dataclass)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def failing_clearly(call, store: DataStore):
    """``call()``; an encoder whose weights cannot load, or a full disk under the data folder ``store``,
    fails the step at once with what to do (a retry cannot help)."""
    try:
        return call()
    except EncoderUnavailable as error:
        raise dg.Failure(str(error), allow_retries=False) from None
    except Exception as error:
        full = out_of_space(error)
        if full is not None:
            raise dg.Failure(out_of_space_message(store.root, full), allow_retries=False) from error
        raise
