"""Request and response examples for the OpenAPI document (/docs and /redoc), shaped as the routes answer."""

from __future__ import annotations

from genre_pipeline.champion import registry
from genre_pipeline.models import movie as model_input
from genre_pipeline.serving.inputs import MOVIE_EXAMPLE

MOVIE = {field.name: field.example for field in model_input.FIELDS if field.kind != "image"}
SECOND_MOVIE = {"overview": "Two rival chefs fall in love during a summer in Provence.", "vote_average": 7.1}

MODEL = {"name": registry.REGISTERED_MODEL, "version": "3", "model": "stacked_model", "run_id": "5f0c9e0d2b7a4c16"}
SCORES = [
    {"genre": "Western", "probability": 0.912, "threshold": 0.455, "decided": True},
    {"genre": "Action", "probability": 0.804, "threshold": 0.462, "decided": True},
    {"genre": "Drama", "probability": 0.431, "threshold": 0.472, "decided": False},
]
PREDICTION = {
    "genres": ["Western", "Action"],
    "scores": SCORES,  # every genre of the model's label set, most probable first (three shown)
    "inputs": {
        "overview": True,
        "tagline": True,
        "title": True,
        "metadata": ["runtime", "release_year"],
        "poster": False,
    },
    "notes": [],
}
ROMANCE = {
    "genres": ["Romance", "Comedy"],
    "scores": [
        {"genre": "Romance", "probability": 0.873, "threshold": 0.48, "decided": True},
        {"genre": "Comedy", "probability": 0.655, "threshold": 0.471, "decided": True},
        {"genre": "Drama", "probability": 0.402, "threshold": 0.472, "decided": False},
    ],
    "inputs": {"overview": True, "tagline": False, "title": False, "metadata": ["vote_average"], "poster": False},
    "notes": [],
}
ERROR = {"error": "overview: empty; give the movie's plot overview"}


def json_response(example: dict, description: str = "Successful Response") -> dict:
    return {"description": description, "content": {"application/json": {"example": example}}}


def errors(*statuses: int) -> dict:
    """The error answers a route gives, each ``{"error": "..."}``."""
    reasons = {
        400: f"The body is not a JSON object (for example {MOVIE_EXAMPLE})",
        401: "An API key is required and missing",
        403: "The API key is not known",
        404: "No such model or version",
        413: "The body or poster is over its limit",
        415: "The Content-Type is not accepted",
        422: "A field is missing or out of its limits; the message names it",
        429: "The caller's rate limit is spent (Retry-After)",
        503: "No champion is loaded yet, or the queue is full (Retry-After)",
    }
    return {status: json_response(ERROR, reasons[status]) for status in statuses}


PREDICT_RESPONSES = {200: json_response(PREDICTION | {"model": MODEL})} | errors(400, 401, 403, 413, 415, 422, 429, 503)
BATCH_RESPONSES = {200: json_response({"model": MODEL, "predictions": [PREDICTION, ROMANCE]})} | errors(
    400, 401, 403, 413, 415, 422, 429, 503
)
BATCH_REQUEST = {"movies": [MOVIE, SECOND_MOVIE]}

LABELS = ["Western", "Action", "Drama"]  # a model's labels, in its outputs' order (three shown)
V2_METADATA = {
    "name": registry.REGISTERED_MODEL,
    "versions": ["3"],
    "platform": "mlflow_pyfunc",
    "inputs": [
        {"name": "overview", "datatype": "BYTES", "shape": [-1]},
        {"name": "tagline", "datatype": "BYTES", "shape": [-1]},
        {"name": "poster", "datatype": "BYTES", "shape": [-1]},
        {"name": "runtime", "datatype": "FP64", "shape": [-1]},
    ],
    "outputs": [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]},
        {"name": "decisions", "datatype": "BOOL", "shape": [-1, len(LABELS)]},
    ],
    "parameters": {"labels": LABELS, "required_inputs": ["overview"]},
}
V2_INFER_REQUEST = {
    "id": "42",
    "inputs": [
        {"name": "overview", "datatype": "BYTES", "shape": [2], "data": [MOVIE["overview"], SECOND_MOVIE["overview"]]},
        {"name": "runtime", "datatype": "FP64", "shape": [2], "data": [MOVIE["runtime"], None]},
    ],
}
V2_INFER_RESPONSES = {
    200: json_response(
        {
            "model_name": registry.REGISTERED_MODEL,
            "model_version": "3",
            "id": "42",
            "parameters": {"labels": LABELS},
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "data": [0.91, 0.8, 0.43, 0.02, 0.05, 0.4],
                },
                {
                    "name": "decisions",
                    "datatype": "BOOL",
                    "shape": [2, 3],
                    "data": [True, True, False, False, False, False],
                },
            ],
        }
    )
} | errors(401, 403, 404, 413, 415, 422, 429, 503)
