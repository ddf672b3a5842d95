"""CUB-200-2011 cells (a set x a model x a seed): data, model, and what the record says.

Everything else (resume, lock, weights, record, tracker, pictures) is :func:`stn_repro.runs.run_seed`'s.
The data come from a ``DataLoader`` (:class:`~stn_repro.data.cub.CubStream`), so the cell trains with its
own learner (:class:`~stn_repro.training.data_parallel.LoaderLearner`), in one process or data-parallel
over several (``torchrun``; only rank 0 writes).

**Metric**: the record's ``test_error`` is the % top-1 *error* on the test split (``metric``: ``% top-1
test error``), as every experiment's runner records errors; ``paper_error`` is the paper's 100 - accuracy
and ``paper_accuracy`` its Table 3 number. The Table 3 writer prints accuracy (100 - error), as the paper.

**Sizes**: a data set's nominal ``size`` (224 or 448) and ``resize`` (256 or 512) and the parts' 224 px are
the paper's at ``part_size=224``. Smaller ``part_size`` (CPU profiles) scales all three by
``part_size / 224``: e.g. 64 gives 64 px crops from 73 px (224 rows) and 128 px crops from 146 px with 64 px
parts (448 rows). The record keeps both the nominal size (the table's column) and the pixels used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor, nn

from stn_repro.data.cub.dataset import CubCrops, CubDataset, CubStream, eval_loader
from stn_repro.data.cub.index import load_cub_index
from stn_repro.models.cub import CubSTCNN, build_cub_model, part_boxes, part_figure, sample_parts
from stn_repro.paper import cub_paper_accuracy, cub_paper_error
from stn_repro.tracking import Tracker
from stn_repro.training.data_parallel import DistContext, LoaderLearner
from stn_repro.training.objectives import Classification
from stn_repro.training.run_folder import RunLock, RunLocked, read_finished_record
from stn_repro.training.runs import PreparedRun, run_seed
from stn_repro.training.settings import SpeedSettings, TrainSettings
from stn_repro.training.weights import load_trained

CUB_SIZES = (224, 448)
PAPER_PART_SIZE = 224
TOP1 = Classification(name="top1", error_name="% top-1 test error")
NUM_PICTURES = 6


@dataclass
class CubSpec:
    """Everything that defines one CUB run, as explicit values (sizes nominal, see the module docstring)."""

    data: str  # the set's name in tables and run folders: cub224, synthetic-cub448, ...
    size: int  # nominal input side: 224 or 448
    resize: int  # nominal shorter side before cropping: 256 or 512
    model: str  # cnn or st_cnn
    seed: int
    batch_size: int  # the global batch: each of N processes takes batch_size / N
    profile: str
    reduced_budget: bool
    num_parts: int = 0  # st_cnn: 2 or 4 parallel attention transformers
    synthetic: bool = False
    part_size: int = PAPER_PART_SIZE  # px of each part (and of the 224 px input); scales every size
    backbone: str = "bn_inception"
    width: float = 1.0
    dropout: float = 0.7
    weights: str | None = None  # a local ImageNet state dict for the backbone; None: from scratch
    input_convention: str | None = None
    tiling: list[list[float]] | None = None
    loc_channels: int = 128
    loc_hidden: int = 128
    workers: int = 4  # DataLoader workers per process
    eval_batch_size: int = 64
    device: str = "auto"
    data_dir: Path | None = None
    speed: SpeedSettings = field(default_factory=SpeedSettings)

    def __post_init__(self) -> None:
        if self.size not in CUB_SIZES:
            raise ValueError(f"CUB size must be one of {CUB_SIZES}, got {self.size!r}")
        if self.model not in ("cnn", "st_cnn"):
            raise ValueError(f"unknown CUB model {self.model!r}; use cnn or st_cnn")
        if self.model == "st_cnn" and self.num_parts < 1:
            raise ValueError(f"an ST-CNN needs num_parts >= 1, got {self.num_parts}")
        if self.batch_size < 1 or self.workers < 0 or self.eval_batch_size < 1:
            raise ValueError("trainer.batch_size and eval_batch_size must be >= 1, trainer.workers >= 0")

    @property
    def model_name(self) -> str:
        return "cnn" if self.model == "cnn" else f"st_cnn_{self.num_parts}x"

    @property
    def cell(self) -> str:
        return f"{self.data}-{self.model_name}"

    @property
    def crops(self) -> CubCrops:
        factor = self.part_size / PAPER_PART_SIZE
        crop = round(self.size * factor)
        return CubCrops(resize=max(crop, round(self.resize * factor)), crop=crop)

    def model_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~stn_repro.models.cub.build_cub_model` (without weights)."""
        return {
            "backbone": self.backbone,
            "width": self.width,
            "input_size": self.crops.crop,
            "part_size": self.part_size,
            "num_parts": self.num_parts,
            "dropout": self.dropout,
            "tiling": self.tiling,
            "input_convention": self.input_convention,
            "loc_channels": self.loc_channels,
            "loc_hidden": self.loc_hidden,
        }


def _initialisation(report: dict[str, Any] | None) -> str:
    if report is None:
        return "from scratch"
    return "from a trained CUB CNN" if report.get("source") == "cub_cnn" else "ImageNet weights"


def prepare_cub_seed(
    spec: CubSpec,
    device: torch.device,
    dist_context: DistContext | None = None,
    log: Callable[[str], None] = print,
) -> PreparedRun:
    """The data, the seeded model (built after ``torch.manual_seed(spec.seed)``), the stream and the record
    of one seed; ``dist_context``: this process's share of a data-parallel run."""
    world = dist_context.world_size if dist_context else 1
    rank = dist_context.rank if dist_context else 0
    if spec.batch_size % world:
        raise ValueError(
            f"trainer.batch_size={spec.batch_size} (the global batch) must be a multiple of the {world} "
            "processes; change it or NPROC"
        )
    index = load_cub_index(spec.data_dir, synthetic=spec.synthetic)
    crops = spec.crops
    train_set = CubDataset(index, "train", crops, dtype=torch.uint8)
    test_set = CubDataset(index, "test", crops, dtype=torch.uint8)
    pin = device.type == "cuda"
    stream = CubStream(
        train_set,
        spec.batch_size // world,
        spec.seed,
        device=device,
        rank=rank,
        world_size=world,
        workers=spec.workers,
        pin_memory=pin,
    )
    test_loader = eval_loader(
        test_set, spec.eval_batch_size, rank=rank, world_size=world, workers=spec.workers, pin_memory=pin
    )
    torch.manual_seed(spec.seed)
    model, info = build_cub_model(
        spec.model, num_classes=index.num_classes, weights=spec.weights, log=log, **spec.model_options()
    )
    model.to(device)
    # Evenly spread over the test split, which lists its images class by class: several classes shown.
    shown = torch.linspace(0, len(test_set) - 1, min(NUM_PICTURES, len(test_set))).round().long().tolist()
    pictures = torch.stack([test_set[k][0] for k in shown]).to(device).float() / 255.0
    titles = [index.class_names[int(test_set.labels[k])][:22] for k in shown]
    paper_accuracy = cub_paper_accuracy(spec.model_name, spec.size)
    synthetic = " | SYNTHETIC stand-in data" if spec.synthetic else ""
    pretrained = (
        {"path": spec.weights, **(info.pretrained or {})}
        if spec.weights
        else "from scratch (no ImageNet weights)"
    )
    processes = f" | {world} processes x {spec.batch_size // world} images" if world > 1 else ""
    return PreparedRun(
        cell=spec.cell,
        seed=spec.seed,
        model=model,
        stream=stream,
        eval_sets={},  # the learner scores its own test-set loader
        batch_size=spec.batch_size,
        param_count=info.param_count,
        description=(
            f"{spec.cell} seed {spec.seed} | {info.param_count:,} parameters ({spec.backbone}, width "
            f"{spec.width}, localisation {info.localisation_params:,}) | {crops.crop} px crops from "
            f"{crops.resize} px, {len(train_set):,} training / {len(test_set):,} test images | "
            f"{_initialisation(info.pretrained)} | {device}{processes} | "
            f"profile {spec.profile}{synthetic}"
        ),
        record={
            "experiment": "cub",
            "data": spec.data,
            "model": spec.model_name,
            "transform": None if spec.model == "cnn" else "attention",
            "parts": info.num_parts,
            "size": spec.size,
            "input_px": crops.crop,
            "resize_px": crops.resize,
            "part_px": info.part_size,
            "synthetic": spec.synthetic,
            # The paper's numbers on real CUB: beside a synthetic run they are a reference, not a target.
            "paper_error": cub_paper_error(spec.model_name, spec.size),
            "paper_accuracy": paper_accuracy,
            "accuracy": "100 - test_error (% top-1 accuracy, Table 3's metric)",
            "backbone": spec.backbone,
            "pretrained": pretrained,
            "model_info": asdict(info),
            "train_images": len(train_set),
            "world_size": world,
            "batch_per_process": spec.batch_size // world,
            "test_set": {
                "source": str(index.root),
                "size": len(test_set),
                "sha256": index.checksum(),
                "crop": f"shorter side to {crops.resize} px, central {crops.crop} px crop, one view",
            },
        },
        weights={
            "kind": spec.model,
            "num_classes": index.num_classes,
            "model_options": spec.model_options(),
        },
        objective=TOP1,
        speed=spec.speed,
        figure=(
            None
            if spec.model == "cnn"
            else (lambda: part_figure(model, pictures, titles))  # the paper's Table 3, right
        ),
        make_learner=lambda settings: LoaderLearner(
            model,
            stream,
            settings,
            spec.speed,
            eval_loaders={"test": test_loader},
            dist_context=dist_context,
            objective=TOP1,
        ),
    )


def run_cub_seed(
    spec: CubSpec,
    settings: TrainSettings,
    run_dir: Path,
    *,
    config: dict[str, Any] | None = None,
    make_tracker: Callable[[], Tracker] | None = None,
    log: Callable[[str], None] = print,
    dist_context: DistContext | None = None,
) -> dict[str, Any]:
    """Train and evaluate one seed of a CUB cell in ``run_dir`` (resuming); return its record. With
    ``dist_context`` this process is one of a data-parallel run: only rank 0 logs, tracks and writes."""
    writer = dist_context is None or dist_context.is_writer
    quiet = log if writer else (lambda line: None)
    device = dist_context.device(spec.device) if dist_context is not None else spec.device
    if dist_context is not None:
        _agree_on_the_lock(Path(run_dir), dist_context, quiet)
    return run_seed(
        spec,
        lambda torch_device: prepare_cub_seed(spec, torch_device, dist_context, quiet),
        settings,
        run_dir,
        device=device,
        config=config,
        make_tracker=make_tracker if writer else None,
        log=quiet,
        writer=writer,
    )


def _agree_on_the_lock(run_dir: Path, dist_context: DistContext, log: Callable[[str], None]) -> None:
    """Every process of a data-parallel run learns whether rank 0 can own ``run_dir``: if another launch
    holds it, all of them raise :class:`~stn_repro.runs.RunLocked` (a sweep then skips the run on every
    rank alike, instead of rank 0 skipping it while the others wait for it)."""
    message = [None]
    if dist_context.is_writer and read_finished_record(run_dir) is None:
        try:
            with RunLock(run_dir, log=log):
                pass
        except RunLocked as error:
            message = [str(error)]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise RunLocked(message[0])


def load_trained_cub_model(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """The model a finished CUB run saved (its ``model.pt`` or run folder), rebuilt and in eval mode."""
    return load_trained(
        path,
        lambda state: build_cub_model(
            state["kind"], num_classes=state["num_classes"], log=lambda line: None, **state["model_options"]
        )[0],
        device,
    )


# --- where the parts go ------------------------------------------------------------------------------------------


def object_boxes_in_crops(dataset: CubDataset) -> Tensor:
    """The annotated object box of every image of ``dataset`` (``bounding_boxes.txt``) in the pixels of its
    *test* view, ``[N, 4]`` as ``(x0, y0, x1, y1)``, clipped to the crop.

    **Convention**: the test view of :class:`~stn_repro.data.cub.CubDataset` (:meth:`CubCrops.resized_size`,
    then :meth:`CubCrops.central_window`); pixel ``j`` spans ``[j, j + 1)``.
    """
    crops = dataset.crops
    boxes = []
    for item in range(len(dataset)):
        row = dataset.row(item)
        with Image.open(dataset.index.image_path(row)) as image:
            width, height = image.size
        scale = crops.resize / min(width, height)
        left, top = crops.central_window(*crops.resized_size(width, height))
        x, y, w, h = dataset.index.boxes[row].tolist()
        box = torch.tensor([x * scale - left, y * scale - top, (x + w) * scale - left, (y + h) * scale - top])
        boxes.append(box.clamp(0, crops.crop))
    return torch.stack(boxes)


def box_coverage(objects: Tensor, parts: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """How much of each object box the part boxes cover, on the ``size x size`` pixel grid (a pixel counts
    where its centre ``j + 0.5`` lies in a box): ``(each [N, K], union [N])`` as fractions of the object's
    pixels (0 where an object has no pixel in the crop). ``objects [N, 4]``, ``parts [N, K, 4]``, both
    ``(x0, y0, x1, y1)`` px."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5

    def masks(boxes: Tensor) -> Tensor:  # [..., size, size]
        inside_x = (centres >= boxes[..., 0:1]) & (centres < boxes[..., 2:3])
        inside_y = (centres >= boxes[..., 1:2]) & (centres < boxes[..., 3:4])
        return inside_y.unsqueeze(-1) & inside_x.unsqueeze(-2)

    obj = masks(objects.float())
    part = masks(parts.float())
    area = obj.flatten(1).sum(1).clamp(min=1)
    each = (part & obj.unsqueeze(1)).flatten(2).sum(2) / area.unsqueeze(1)
    union = (part.any(1) & obj).flatten(1).sum(1) / area
    return each, union


@dataclass
class PartPlacement:
    """Where an ST-CNN's parts go on a test split, against the annotated object boxes (px of the input)."""

    part_centres: Tensor  # [N, K, 2] (x, y) px
    object_centres: Tensor  # [N, 2]
    coverage: Tensor  # [N, K]: the fraction of the object box inside each part box
    union_coverage: Tensor  # [N]
    fixed_coverage: Tensor  # [N]: the union's, with every part at its mean centre for every image
    tiling_coverage: Tensor  # [N]: the union's, with the parts at their initial tiling

    def correlation(self, part: int, axis: int) -> float:
        """Pearson's r over the images between a part's centre and the object's centre on ``axis`` (0: x)."""
        a, b = self.part_centres[:, part, axis], self.object_centres[:, axis]
        a, b = a - a.mean(), b - b.mean()
        denominator = (a.norm() * b.norm()).item()
        return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


@torch.no_grad()
def part_placement(model: CubSTCNN, dataset: CubDataset, batch_size: int = 64) -> PartPlacement:
    """Run ``model``'s localisation net over the test views of ``dataset`` (float, in ``[0, 1]``) and
    measure where its parts go: their centres, their spread, and how much of each image's object box they
    cover, beside two fixed layouts (the learned mean placement, the initial tiling) that ignore the image."""
    size = dataset.crops.crop
    params = []
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset[k][0] for k in range(start, min(start + batch_size, len(dataset)))])
        params.append(sample_parts(model, images)[1])
    params = torch.cat(params).cpu()  # [N, K, 2]
    scale = model.transformer.family.scale
    objects = object_boxes_in_crops(dataset)
    each, union = box_coverage(objects, part_boxes(params, size, scale), size)
    mean = params.mean(0, keepdim=True).expand_as(params)
    tiling = model.tiling.cpu().unsqueeze(0).expand_as(params)
    _, fixed = box_coverage(objects, part_boxes(mean, size, scale), size)
    _, tiled = box_coverage(objects, part_boxes(tiling, size, scale), size)
    return PartPlacement(
        part_centres=(params + 1) * size / 2,  # align_corners=False: normalised u is pixel (u + 1) S / 2
        object_centres=(objects[:, :2] + objects[:, 2:]) / 2,
        coverage=each,
        union_coverage=union,
        fixed_coverage=fixed,
        tiling_coverage=tiled,
    )
