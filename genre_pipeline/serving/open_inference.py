"""The Open Inference Protocol (KServe V2), the REST dialect that KServe, Seldon MLServer, Triton and
tritonclient speak: the champion's tensors described, and an infer request read into the same model rows
the JSON API makes (with its checks and messages) and answered as tensors.

Inputs are one tensor per movie field, shape [N] (or [N, 1]), N movies per request: the texts as BYTES,
``poster`` as BYTES (the image file; base64 in a JSON body, raw bytes in the binary extension), the
numbers as FP64 with NaN for "not given" (any integer or float datatype is read). An empty string is a
text or poster not given; only ``overview`` is required. Outputs: ``probabilities`` (FP32) and
``decisions`` (BOOL, the probability at or above the genre's tuned threshold), shape [N, genres], the
genres in the order the model metadata's ``parameters.labels`` gives. The binary tensor data extension
(Triton's, tritonclient's default) is read, and answered in when asked for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import numpy as np

from genre_pipeline.models import movie as model_input
from genre_pipeline.serving import inputs
from genre_pipeline.serving.inputs import InputError, Movie

BINARY_HEADER = "inference-header-content-length"
TEXT_INPUTS = tuple(f.name for f in model_input.FIELDS if f.kind == "text")
NUMBER_INPUTS = tuple(f.name for f in model_input.FIELDS if f.kind in ("number", "integer"))
POSTER_INPUT = next(f.name for f in model_input.FIELDS if f.kind == "image")
OUTPUTS = {"probabilities": "FP32", "decisions": "BOOL"}
NUMERIC_DATATYPES = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


def tensor_metadata(labels: list[str]) -> dict:
    """The model metadata's inputs and outputs (a dimension of -1: any number of movies)."""
    datatypes = {"text": "BYTES", "image": "BYTES", "number": "FP64", "integer": "FP64"}
    return {
        "inputs": [{"name": f.name, "datatype": datatypes[f.kind], "shape": [-1]} for f in model_input.FIELDS],
        "outputs": [{"name": name, "datatype": dtype, "shape": [-1, len(labels)]} for name, dtype in OUTPUTS.items()],
        "parameters": {"labels": labels, "required_inputs": [f.name for f in model_input.FIELDS if f.required]},
    }


def _read_json(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request's JSON and, under the binary extension, the bytes that follow it."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    else:
        binary = b""
    payload = inputs.json_object(body, example='{"inputs": [{"name": "overview", "shape": [1], ...}]}')
    return payload, binary


def _split_bytes(raw: bytes, where: str) -> list[bytes]:
    """BYTES elements as the binary extension lays them out: a 4-byte little-endian length, then the bytes."""
    elements, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InputError(f"{where}: BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise InputError(f"{where}: a BYTES element of {size} bytes runs past the tensor's data")
        elements.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return elements


def _elements(tensor: dict, binary: bytes, offset: int) -> tuple[list, int]:
    """A tensor's elements, flattened, and how many bytes of the binary section it used."""
    name, datatype = tensor.get("name"), tensor.get("datatype")
    where = f"inputs[{name}]"
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InputError(f"{where}: binary_data_size {size!r} runs past the request's binary data")
        raw = binary[offset : offset + size]
        if datatype == "BYTES":
            return _split_bytes(raw, where), size
        if datatype not in NUMERIC_DATATYPES:
            raise InputError(f"{where}: datatype {datatype!r} is not one this model reads")
        try:
            return np.frombuffer(raw, dtype=NUMERIC_DATATYPES[datatype]).tolist(), size
        except ValueError:
            raise InputError(f"{where}: {size} bytes are not a whole number of {datatype} elements") from None
    data = tensor.get("data")
    if data is None:
        raise InputError(f"{where}: no data (give 'data', or binary data with parameters.binary_data_size)")
    flat = np.asarray(data, dtype=object).reshape(-1).tolist() if isinstance(data, list) else [data]
    return flat, 0


def _movie_count(tensor: dict, elements: list) -> int:
    shape = tensor.get("shape")
    where = f"inputs[{tensor.get('name')}]"
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError(f"{where}: shape must be [N] or [N, 1] for N movies, not {shape!r}")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InputError(f"{where}: shape {shape} has more than one value per movie; send [N] or [N, 1]")
    if math.prod(shape) != len(elements):
        raise InputError(f"{where}: shape {shape} holds {math.prod(shape)} elements, the data {len(elements)}")
    return shape[0]


def _text(value, where: str) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise InputError(f"{where}: not UTF-8 text") from None
    if not isinstance(value, str):
        raise InputError(f"{where}: BYTES text expected, got {value!r:.40}")
    return value if value.strip() else None


def _number(value, where: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: a number expected, got {value!r:.40}")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value


def _poster(value, where: str, *, binary: bool) -> bytes | None:
    if binary:
        return inputs.checked_poster(value, where) if value else None
    if not isinstance(value, str):
        raise InputError(f"{where}: in a JSON body a poster is the image file as a base64 string")
    return inputs.decoded_poster(value, where) if value else None


@dataclasses.dataclass(frozen=True)
class InferRequest:
    rows: list[dict]  # one checked model row per movie
    outputs: list[str]  # the outputs to answer, in order
    binary_output: bool  # answer in the binary extension
    id: str | None = None  # the request's id, echoed


def read_request(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request (JSON, or the binary extension when ``header_length`` is given), checked whole
    before the model runs: InputError says what is wrong and where."""
    payload, binary = _read_json(body, header_length)
    outputs, binary_output = _requested_outputs(payload)
    tensors = payload.get("inputs")
    if not isinstance(tensors, list) or not tensors or not all(isinstance(t, dict) for t in tensors):
        raise InputError('"inputs" must be a list of tensors: [{"name", "shape", "datatype", "data"}, ...]')
    known = set(TEXT_INPUTS) | set(NUMBER_INPUTS) | {POSTER_INPUT}
    columns, offset, counts = {}, 0, set()
    for tensor in tensors:
        name = tensor.get("name")
        if not isinstance(name, str) or name not in known:
            raise InputError(f"inputs[{name}]: not an input of this model (GET the model's metadata)")
        if name in columns:
            raise InputError(f"inputs[{name}]: given twice")
        elements, used = _elements(tensor, binary, offset)
        offset += used
        counts.add(_movie_count(tensor, elements))
        columns[name] = (elements, used > 0)
    if offset != len(binary):
        raise InputError(f"{len(binary) - offset} bytes of binary data belong to no input")
    if "overview" not in columns:
        raise InputError("inputs: overview is required (a BYTES tensor, one plot overview per movie)")
    if len(counts) != 1:
        raise InputError(f"inputs: every input must hold one value per movie; their sizes differ: {sorted(counts)}")
    (n,) = counts
    if not 1 <= n <= inputs.MAX_BATCH:
        raise InputError(f"inputs: {n} movies; a request carries 1 to {inputs.MAX_BATCH}")
    rows = []
    for i in range(n):
        fields, poster = {}, None
        for name, (elements, from_binary) in columns.items():
            where = f"inputs[{name}][{i}]"
            if name == POSTER_INPUT:
                poster = _poster(elements[i], where, binary=from_binary)
            elif name in NUMBER_INPUTS:
                fields[name] = _number(elements[i], where)
            else:
                fields[name] = _text(elements[i], where)
        try:
            movie = inputs.validated({k: v for k, v in fields.items() if v is not None}, Movie)
        except InputError as error:
            raise InputError(f"movie {i}: {error}", error.status) from None
        rows.append(inputs.model_row(movie, poster))
    return InferRequest(rows, outputs, binary_output, payload.get("id"))


def _requested_outputs(payload: dict) -> tuple[list[str], bool]:
    """The outputs to answer, and whether in binary: ``outputs`` may name some, each may ask for binary
    data, and ``parameters.binary_data_output`` asks it for all."""
    binary_all = bool((payload.get("parameters") or {}).get("binary_data_output", False))
    asked = payload.get("outputs")
    if asked is None:
        return list(OUTPUTS), binary_all
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise InputError('"outputs" must be a list like [{"name": "probabilities"}]')
    names = [o.get("name") for o in asked]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InputError(f"outputs: {', '.join(map(str, unknown))}: not an output of this model ({', '.join(OUTPUTS)})")
    binary = binary_all or any((o.get("parameters") or {}).get("binary_data", False) for o in asked)
    return names, binary


def answer(
    request: InferRequest, labels: list[str], predictions: list, *, model_name: str, version: str
) -> tuple[bytes, dict[str, str]]:
    """The infer response's body and headers: the requested outputs, in JSON or the binary extension."""
    names, binary = request.outputs, request.binary_output
    scores = [{genre: p for genre, p, _ in prediction.scores} for prediction in predictions]
    probabilities = np.array([[by_genre[g] for g in labels] for by_genre in scores])
    decisions = np.array([[g in prediction.genres for g in labels] for prediction in predictions], dtype=bool)
    arrays = {"probabilities": probabilities.astype("<f4"), "decisions": decisions}
    response = {"model_name": model_name, "model_version": version, "parameters": {"labels": labels}, "outputs": []}
    if request.id is not None:
        response["id"] = request.id
    blobs = []
    for name in names:
        array = arrays[name]
        tensor = {"name": name, "datatype": OUTPUTS[name], "shape": list(array.shape)}
        if binary:
            blobs.append(array.tobytes())
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            tensor["data"] = array.reshape(-1).tolist()
        response["outputs"].append(tensor)
    head = json.dumps(response).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        BINARY_HEADER: str(len(head)),
    }
