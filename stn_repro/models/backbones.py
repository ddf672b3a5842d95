"""The ImageNet backbones of the CUB-200-2011 models, their input conventions and their pretrained weights.

- :class:`BNInception`: Inception with batch normalisation (Ioffe & Szegedy 2015): GoogLeNet-style modules
  with BN after every convolution, the 5x5 branch replaced by two 3x3 convolutions ("double 3x3"), average
  pooling inside the modules and stride-2 modules (3c, 4e) without a 1x1 branch that pass max-pooled input
  through. Neither torchvision nor timm ships it; the layer names are those of the widely used Caffe port
  (``conv1_7x7_s2``, ``inception_3a_double_3x3_1_bn``, ...), so its ImageNet state dict loads as it is
  (that port expects BGR 0-255 input minus a mean: ``input_convention="caffe_bgr"``). ``width`` scales
  every layer for CPU runs. Pooled features: 1024-D at width 1.
- Alternatives (config ``backbone``): torchvision ``inception_v3`` (2048-D), ``googlenet`` (1024-D),
  ``resnet50`` (2048-D) as feature extractors, their classifiers removed.
- :class:`Normalise`: the backbone's input convention (:data:`INPUT_CONVENTIONS`), applied after the
  transformers; :func:`load_backbone_weights` loads a state dict and reports what matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

BN_INCEPTION_STEP = (
    32  # px: BN-Inception's input sides must be multiples of this (224 = 7 x 32, 448 = 14 x 32)
)


BACKBONES = ("bn_inception", "inception_v3", "googlenet", "resnet50")


INPUT_CONVENTIONS: dict[str, dict[str, Any]] = {
    # torchvision's ResNet weights (and the suite's own BN-Inception): RGB, ImageNet mean and std.
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": 1.0, "bgr": False},
    # The Caffe BN-Inception port: BGR channels, 0-255, minus the mean (104, 117, 128) (B, G, R), std 1.
    "caffe_bgr": {"mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0), "scale": 255.0, "bgr": True},
    # torchvision's GoogLeNet and Inception-v3 weights (ported from TensorFlow): (x - 0.5) / 0.5.
    "tf_inception": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "scale": 1.0, "bgr": False},
}


DEFAULT_CONVENTION = {
    "bn_inception": "imagenet",
    "inception_v3": "tf_inception",
    "googlenet": "tf_inception",
    "resnet50": "imagenet",
}


BN_INCEPTION_MODULES: dict[str, tuple[int, int, int, int, int, str, int, int]] = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class Normalise(nn.Module):
    """``[0, 1]`` RGB -> what a backbone's weights expect (:data:`INPUT_CONVENTIONS`); no parameters."""

    def __init__(self, convention: str = "imagenet"):
        super().__init__()
        if convention not in INPUT_CONVENTIONS:
            raise ValueError(
                f"unknown input convention {convention!r}; known: {', '.join(INPUT_CONVENTIONS)}"
            )
        spec = INPUT_CONVENTIONS[convention]
        self.convention, self.scale, self.bgr = convention, spec["scale"], spec["bgr"]
        self.register_buffer("mean", torch.tensor(spec["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"convention={self.convention!r}"


class BNInception(nn.Module):
    """BN-Inception as a feature extractor: :meth:`features` gives the last maps ``[B, C, H/32, W/32]``
    (C = 1024 at width 1; 7x7 at 224 px), :meth:`forward` their global average ``[B, C]``.

    Every convolution is followed by batch normalisation and a ReLU (convolutions keep their bias, as the
    Caffe port whose names and state-dict layout this follows). Max pooling 3x3/2 with ceil mode after
    the stem's two stages and in the stride-2 modules; average pooling 3x3/1 (max in 5b) before the pool
    projections. ``width`` multiplies every layer's channels (rounded, at least 1). Input sides must be
    multiples of 32 (224, 448; 64 or 32 for CPU runs): the stride-2 modules concatenate a stride-2
    convolution with a ceil-mode pooling, which agree in size only on even maps.
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = float(width)
        self._convs: list[str] = []
        self._conv("conv1_7x7_s2", 3, self._c(64), 7, 2, 3)
        self._conv("conv2_3x3_reduce", self._c(64), self._c(64), 1)
        self._conv("conv2_3x3", self._c(64), self._c(192), 3, 1, 1)
        channels = self._c(192)
        self.modules_plan: list[tuple[str, tuple]] = []
        for name, plan in BN_INCEPTION_MODULES.items():
            one, red, three, dred, double, _, proj, stride = plan
            prefix = f"inception_{name}"
            out = 0
            if one:
                self._conv(f"{prefix}_1x1", channels, self._c(one), 1)
                out += self._c(one)
            self._conv(f"{prefix}_3x3_reduce", channels, self._c(red), 1)
            self._conv(f"{prefix}_3x3", self._c(red), self._c(three), 3, stride, 1)
            self._conv(f"{prefix}_double_3x3_reduce", channels, self._c(dred), 1)
            self._conv(f"{prefix}_double_3x3_1", self._c(dred), self._c(double), 3, 1, 1)
            self._conv(f"{prefix}_double_3x3_2", self._c(double), self._c(double), 3, stride, 1)
            out += self._c(three) + self._c(double)
            if proj:
                self._conv(f"{prefix}_pool_proj", channels, self._c(proj), 1)
                out += self._c(proj)
            else:
                out += channels  # stride 2: the max-pooled input itself
            self.modules_plan.append((name, plan))
            channels = out
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _c(self, channels: int) -> int:
        return max(1, round(channels * self.width))

    def _conv(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, kernel, stride, padding))
        setattr(self, f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5))
        self._convs.append(name)

    def _unit(self, name: str, x: Tensor) -> Tensor:
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)), inplace=True)

    def features(self, x: Tensor) -> Tensor:
        x = self._unit("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self._unit("conv2_3x3", self._unit("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        for name, (one, _, _, _, _, pool, _, stride) in self.modules_plan:
            prefix = f"inception_{name}"
            branches = []
            if one:
                branches.append(self._unit(f"{prefix}_1x1", x))
            branches.append(self._unit(f"{prefix}_3x3", self._unit(f"{prefix}_3x3_reduce", x)))
            double = self._unit(f"{prefix}_double_3x3_reduce", x)
            branches.append(
                self._unit(f"{prefix}_double_3x3_2", self._unit(f"{prefix}_double_3x3_1", double))
            )
            if stride == 2:
                branches.append(F.max_pool2d(x, 3, 2, ceil_mode=True))
            else:
                pooled = (
                    F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
                    if pool == "avg"
                    else F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
                )
                branches.append(self._unit(f"{prefix}_pool_proj", pooled))
            x = torch.cat(branches, 1)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def weights_target(self) -> tuple[nn.Module, tuple[str, ...]]:
        """The module an ImageNet state dict loads into, and the prefixes of its unused classifier keys."""
        return self, ("last_linear.", "fc.")


class TorchvisionBackbone(nn.Module):
    """A torchvision ImageNet network as a feature extractor (its classifier removed; weights load into
    ``self.net`` with torchvision's own key names). ``features`` gives the last maps, ``forward`` their
    global average."""

    LAYERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "resnet50": ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
        "googlenet": (
            "conv1",
            "maxpool1",
            "conv2",
            "conv3",
            "maxpool2",
            "inception3a",
            "inception3b",
            "maxpool3",
            "inception4a",
            "inception4b",
            "inception4c",
            "inception4d",
            "inception4e",
            "maxpool4",
            "inception5a",
            "inception5b",
        ),
        "inception_v3": (
            "Conv2d_1a_3x3",
            "Conv2d_2a_3x3",
            "Conv2d_2b_3x3",
            "maxpool1",
            "Conv2d_3b_1x1",
            "Conv2d_4a_3x3",
            "maxpool2",
            "Mixed_5b",
            "Mixed_5c",
            "Mixed_5d",
            "Mixed_6a",
            "Mixed_6b",
            "Mixed_6c",
            "Mixed_6d",
            "Mixed_6e",
            "Mixed_7a",
            "Mixed_7b",
            "Mixed_7c",
        ),
    }
    OUT_CHANNELS: ClassVar[dict[str, int]] = {"resnet50": 2048, "googlenet": 1024, "inception_v3": 2048}

    def __init__(self, name: str):
        super().__init__()
        if name == "resnet50":
            net = torchvision.models.resnet50(weights=None)
        elif name == "googlenet":
            net = torchvision.models.googlenet(
                weights=None, aux_logits=False, transform_input=False, init_weights=True
            )
        elif name == "inception_v3":
            net = torchvision.models.inception_v3(
                weights=None, aux_logits=False, transform_input=False, init_weights=True
            )
        else:
            raise ValueError(f"unknown torchvision backbone {name!r}; known: {', '.join(self.LAYERS)}")
        kept = set(self.LAYERS[name])
        for child in [n for n, _ in net.named_children() if n not in kept]:
            setattr(net, child, nn.Identity())  # the classifier (and dropout, aux heads): unused
        self.name, self.net, self.out_channels = name, net, self.OUT_CHANNELS[name]

    def features(self, x: Tensor) -> Tensor:
        for layer in self.LAYERS[self.name]:
            x = getattr(self.net, layer)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def weights_target(self) -> tuple[nn.Module, tuple[str, ...]]:
        return self.net, ("fc.", "aux1.", "aux2.", "AuxLogits.")


def build_backbone(name: str, width: float = 1.0) -> nn.Module:
    """A backbone with ``features(x)``, ``forward(x) -> [B, out_channels]`` and ``out_channels``."""
    if name == "bn_inception":
        return BNInception(width)
    if name not in BACKBONES:
        raise ValueError(f"unknown CUB backbone {name!r}; known: {', '.join(BACKBONES)}")
    if width != 1.0:
        raise ValueError(f"width={width}: the width multiplier is for backbone=bn_inception only")
    return TorchvisionBackbone(name)


@dataclass
class WeightsReport:
    """What :func:`load_backbone_weights` did: tensors loaded, and the keys that did not match."""

    path: str
    loaded: int
    missing: list[str] = field(
        default_factory=list
    )  # the model's, absent from the file (kept as initialised)
    unexpected: list[str] = field(default_factory=list)  # the file's, unknown to the model (ignored)
    classifier: list[str] = field(default_factory=list)  # the file's classifier (ImageNet's; not used)
    source: str = "imagenet"  # "imagenet": an ImageNet state dict; "cub_cnn": a trained CUB CNN's model.pt
    # The input convention the weights were trained with, as the file tells it (None: it does not).
    convention: str | None = None

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            shown = ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")
            return f"{len(keys)}" + (f" ({shown})" if keys else "")

        return (
            f"loaded {self.loaded} tensors from {self.path}; missing, kept at their initialisation: "
            f"{names(self.missing)}; unexpected, ignored: {names(self.unexpected)}; the file's classifier, "
            f"not used: {len(self.classifier)}"
        )


TRAINED_CNN_BACKBONE = "backbone."  # where a trained CubCNN's state dict keeps its backbone


def load_backbone_weights(backbone: nn.Module, path: Path | str) -> WeightsReport:
    """Load ImageNet weights from the local file ``path`` into ``backbone`` (as built by
    :func:`build_backbone`) and report what matched.

    The file is a state dict (or a checkpoint with one under ``state_dict``; a ``module.`` prefix is
    stripped), or the ``model.pt`` of a trained CUB CNN of this suite, whose backbone (at the same
    ``width``) is taken: the CPU profile starts its ST-CNNs from its own CNN where the paper starts from
    ImageNet. The backbone's tensors found in it are loaded; the ones absent stay as initialised and are
    reported as *missing*; the file's keys the backbone does not have are reported as *unexpected*,
    except its ImageNet classifier, which is counted apart. Raises ``ValueError`` for a file that cannot
    be read, holds none of the backbone's tensors, or holds any with another shape (another architecture,
    or ``width`` other than 1).
    """
    path = Path(path)
    if path.is_dir() and (path / "model.pt").is_file():  # a finished CNN run's folder
        path = path / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights {path} do not exist; fix: point model.weights at a local ImageNet state dict, "
            "or set model.weights=null to train from scratch"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"backbone weights {path} cannot be read ({type(error).__name__}: {error})"
        ) from None
    saved_options = state.get("model_options") if isinstance(state, dict) else None  # a suite's model.pt
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"backbone weights {path} are not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target, classifier_prefixes = backbone.weights_target()
    own = target.state_dict()
    if not any(k in own for k in state) and any(k.startswith(TRAINED_CNN_BACKBONE) for k in state):
        # A trained CUB CNN of this suite (its run's model.pt): its backbone under "backbone."; the rest (its
        # classifier) is counted as the file's classifier, not used.
        head = {k.split(".")[0] + "." for k in state if not k.startswith(TRAINED_CNN_BACKBONE)}
        state = {k.removeprefix(TRAINED_CNN_BACKBONE): v for k, v in state.items()}
        classifier_prefixes = (*classifier_prefixes, *sorted(head))
        source = "cub_cnn"
    else:
        source = "imagenet"
    classifier = sorted(k for k in state if k.startswith(classifier_prefixes) and k not in own)
    unexpected = sorted(k for k in state if k not in own and k not in classifier)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if mismatched:
        key, theirs, ours = mismatched[0]
        raise ValueError(
            f"backbone weights {path}: {len(mismatched)} tensors have other shapes than the model's (first: "
            f"{key} {theirs} in the file, {ours} in the model): weights of another architecture or width; fix: "
            "load them into the backbone they were made for (ImageNet files: model.width=1.0; a trained CUB "
            "CNN: the width it was trained at)"
        )
    matched = [k for k in own if k in state]
    if not matched:
        raise ValueError(
            f"backbone weights {path} hold none of the {type(backbone).__name__} tensors (the file's keys look "
            f"like {', '.join(list(state)[:3])}; the model's like {', '.join(list(own)[:3])}); fix: use weights "
            "of the configured model.backbone"
        )
    target.load_state_dict({k: state[k] for k in matched}, strict=False)
    convention = weights_convention(backbone, state, source, saved_options)
    return WeightsReport(str(path), len(matched), missing, unexpected, classifier, source, convention)


def weights_convention(
    backbone: nn.Module, state: dict[str, Tensor], source: str, saved_options: dict | None
) -> str | None:
    """The input convention a weights file was trained with, where its keys (or the suite's own model.pt)
    tell it; ``None`` where they do not.

    - a CUB CNN trained here: the convention its run used (its ``model.pt`` says);
    - BN-Inception with the Caffe port's 1000-way ImageNet classifier (``last_linear``, 1000 x 1024): the
      widely used port of the Caffe model, which expects BGR, 0-255, minus (104, 117, 128): ``caffe_bgr``;
    - torchvision's networks (their own key names): torchvision's conventions.
    """
    if source == "cub_cnn" and saved_options is not None:
        return saved_options.get("input_convention") or DEFAULT_CONVENTION.get(saved_options.get("backbone"))
    if isinstance(backbone, BNInception):
        classifier = state.get("last_linear.weight")
        if "conv1_7x7_s2.weight" in state and classifier is not None and classifier.shape[0] == 1000:
            return "caffe_bgr"
        return None
    if isinstance(backbone, TorchvisionBackbone):
        return DEFAULT_CONVENTION.get(backbone.name)
    return None
