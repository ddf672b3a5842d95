"""What a model is trained to minimise and how its test error is counted, one object per kind of target.

The training loop, evaluation and the records share these, so an experiment that predicts something other
than one class (SVHN's five digit positions) swaps the objective and keeps the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Classification:
    """One class per image: cross-entropy; an image is wrong when its arg-max class is.

    **Convention**: ``logits [B, K]``, ``labels [B]`` int64.
    """

    name: str = "classification"
    error_name: str = "% test error"

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        # The loss in float32: a bf16 log-softmax loses digits that the SGD update would then amplify.
        return F.cross_entropy(logits.float(), labels)

    def wrong(self, logits: Tensor, labels: Tensor) -> Tensor:
        return logits.argmax(-1) != labels


@dataclass(frozen=True)
class SequenceClassification:
    """Several independent softmax heads, one per position (SVHN: five digits, "no digit" as a class).

    The loss is the sum over positions of each head's cross-entropy (the negative log-likelihood of the
    whole sequence under independent heads); an image is wrong unless *every* position is right (the
    paper's sequence error).

    **Convention**: ``logits [B, L, K]``, ``labels [B, L]`` int64.
    """

    name: str = "sequence"
    error_name: str = "% sequence error"

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        per_position = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
        return per_position.view_as(labels).sum(1).mean()

    def wrong(self, logits: Tensor, labels: Tensor) -> Tensor:
        return (logits.argmax(-1) != labels).any(-1)


CLASSIFICATION = Classification()
SEQUENCE = SequenceClassification()
OBJECTIVES = {objective.name: objective for objective in (CLASSIFICATION, SEQUENCE)}

# What a learner optimises and scores: one class per image, or a sequence of them (SVHN).
Objective = Classification | SequenceClassification
