"""The paper's published numbers, keyed the way run records are (spec: ../shared/paper-spec.md).

Table 1 (% test error on distorted MNIST) comes from the appendix (the CNN / ST-CNN RTS numbers and the R
column also appear in the paper's text); the translated-and-cluttered 60x60 numbers from the text, where the
transform is not stated (affine is the likely one, and the one the suite runs).
"""

from __future__ import annotations

TABLE1_SETS = ("r", "rts", "p", "e")
TABLE1_ERROR: dict[tuple[str, str | None], dict[str, float]] = {
    ("fcn", None): {"r": 2.1, "rts": 5.2, "p": 3.1, "e": 3.2},
    ("cnn", None): {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 1.4},
    ("st_fcn", "affine"): {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 2.7},
    ("st_fcn", "projective"): {"r": 1.3, "rts": 0.9, "p": 1.4, "e": 2.6},
    ("st_fcn", "tps"): {"r": 1.1, "rts": 0.8, "p": 1.4, "e": 2.4},
    ("st_cnn", "affine"): {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.2},
    ("st_cnn", "projective"): {"r": 0.8, "rts": 0.6, "p": 0.8, "e": 1.3},
    ("st_cnn", "tps"): {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.1},
}
CLUTTERED_ERROR: dict[tuple[str, str | None], float] = {
    ("fcn", None): 13.2,
    ("cnn", None): 3.5,
    ("st_fcn", "affine"): 2.0,
    ("st_cnn", "affine"): 1.7,
}

MODEL_LABELS = {"fcn": "FCN", "cnn": "CNN", "st_fcn": "ST-FCN", "st_cnn": "ST-CNN"}
TRANSFORM_LABELS = {None: "", "affine": "Aff", "projective": "Proj", "tps": "TPS"}


def paper_error(data: str, model: str, transform: str | None) -> float | None:
    """The paper's % test error for one cell, or ``None`` where the paper reports none."""
    if data == "tc":
        return CLUTTERED_ERROR.get((model, transform))
    return TABLE1_ERROR.get((model, transform), {}).get(data)


def model_label(model: str, transform: str | None) -> str:
    return " ".join(filter(None, (MODEL_LABELS[model], TRANSFORM_LABELS[transform])))
