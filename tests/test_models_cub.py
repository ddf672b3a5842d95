"""CUB models: BN-Inception's layout and shapes, the CNN and 2x/4x ST-CNN shapes, the parts' initial
tiling, the localisation lr group, ImageNet weights loading with its report, and the part-box picture."""

import pytest
import torch
import torchvision

from stn_repro.models.backbones import BNInception, build_backbone, load_backbone_weights
from stn_repro.models.cub import TILINGS, build_cub_model, part_boxes, part_figure
from stn_repro.training.learners import make_optimizer
from stn_repro.training.settings import TrainSettings
from stn_repro.viz import save_figure

TINY = 0.0625


def test_bn_inception_has_the_papers_layout_under_the_caffe_ports_names():
    net = BNInception(1.0)
    assert net.out_channels == 1024
    assert sum(p.numel() for p in net.parameters()) == 10_270_240  # 11.3M with the 1000-way classifier
    state = net.state_dict()
    for key, shape in {
        "conv1_7x7_s2.weight": (64, 3, 7, 7),
        "conv2_3x3.weight": (192, 64, 3, 3),
        "inception_3a_pool_proj.weight": (32, 192, 1, 1),
        "inception_3c_double_3x3_2.weight": (96, 96, 3, 3),
        "inception_4e_3x3.weight": (192, 128, 3, 3),
        "inception_5a_1x1.weight": (352, 1056, 1, 1),
        "inception_5b_pool_proj_bn.running_var": (128,),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert "inception_3c_1x1.weight" not in state and "inception_4e_pool_proj.weight" not in state


@pytest.mark.parametrize("size,side", [(64, 2), (128, 4), (224, 7)])
def test_bn_inception_features_and_pooled_features(size, side):
    net = BNInception(TINY).eval()
    with torch.no_grad():
        maps = net.features(torch.rand(1, 3, size, size))
        assert maps.shape == (1, net.out_channels, side, side)
        assert net(torch.rand(2, 3, size, size)).shape == (2, net.out_channels)


def test_cnn_and_st_cnn_shapes_at_a_tiny_width():
    x = torch.rand(2, 3, 128, 128)
    cnn, info = build_cub_model("cnn", width=TINY, input_size=64, num_classes=7)
    assert cnn(x[..., :64, :64]).shape == (2, 7) and info.num_parts == 0 and info.pretrained is None
    for parts in (2, 4):
        model, info = build_cub_model("st_cnn", width=TINY, input_size=128, part_size=64, num_parts=parts)
        assert model(x).shape == (2, 200) and info.num_parts == parts
        assert info.feature_dim == parts * model.parts[0].out_channels
        assert model.sample_parts(x).shape == (2, parts, 3, 64, 64)  # 448-style: parts smaller than the input
    with pytest.raises(ValueError, match="multiples of 32"):
        build_cub_model("st_cnn", width=TINY, input_size=100, part_size=64)


@pytest.mark.parametrize("parts", [2, 4])
def test_the_parts_start_tiled_as_documented(parts):
    size = 128
    model, _ = build_cub_model("st_cnn", width=TINY, input_size=size, part_size=64, num_parts=parts)
    params = model.transformer.localisation(torch.rand(3, 3, size, size)).view(3, parts, 2)
    assert torch.equal(params, torch.tensor(TILINGS[parts]).expand(3, -1, -1))  # zero weights, tiling bias
    boxes = part_boxes(params[0], size).tolist()
    q, h, t = size / 4, size / 2, 3 * size / 4
    if parts == 2:  # the left and the right half of the middle band
        assert boxes == [[0, q, h, t], [h, q, size, t]]
    else:  # the four quadrants: top-left, top-right, bottom-left, bottom-right
        assert boxes == [[0, 0, h, h], [h, 0, size, h], [0, h, h, size], [h, h, size, size]]


def test_the_localisation_net_alone_gets_the_localisation_lr():
    model, _ = build_cub_model("st_cnn", width=TINY, input_size=64, part_size=64, num_parts=2)
    optimizer = make_optimizer(model, TrainSettings(localisation_lr_multiplier=1e-4))
    scales = {g["lr_scale"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    localisation = {id(p) for p in model.transformer.localisation.parameters()}
    assert scales[1e-4] == localisation  # its backbone, conv 1x1, fc and regression layer
    assert {id(p) for p in model.transformer.localisation.backbone.parameters()} < localisation
    assert scales[1.0] == {id(p) for p in model.parameters()} - localisation


def test_weights_load_with_a_report_of_what_did_not_match(tmp_path):
    source = BNInception(TINY)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if k != "inception_3a_1x1.weight"}
    state["module.extra.weight"] = torch.zeros(3)
    state["last_linear.weight"], state["last_linear.bias"] = torch.zeros(1000, 64), torch.zeros(1000)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": state}, path)
    target = BNInception(TINY)
    report = load_backbone_weights(target, path)
    assert report.missing == ["inception_3a_1x1.weight"] and report.unexpected == ["extra.weight"]
    assert report.classifier == ["last_linear.bias", "last_linear.weight"] and report.source == "imagenet"
    assert report.loaded == len(source.state_dict()) - 1
    assert torch.equal(target.conv1_7x7_s2.weight, source.conv1_7x7_s2.weight)
    summary = report.summary()
    assert "missing, kept at their initialisation: 1 (inception_3a_1x1.weight)" in summary
    assert "unexpected, ignored: 1 (extra.weight)" in summary and "\n" not in summary

    model, info = build_cub_model(
        "st_cnn", width=TINY, input_size=64, part_size=64, num_parts=2, weights=path, log=lambda s: None
    )
    assert info.pretrained["missing"] == ["inception_3a_1x1.weight"]
    for backbone in model.backbones():  # the localisation net's and every part net's: the same weights
        assert torch.equal(backbone.conv2_3x3.weight, source.conv2_3x3.weight)

    wider = tmp_path / "wider.pth"
    torch.save(BNInception(2 * TINY).state_dict(), wider)
    with pytest.raises(ValueError, match=r"other shapes.*another architecture or width"):
        load_backbone_weights(BNInception(TINY), wider)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(ValueError, match="hold none of the BNInception tensors"):
        load_backbone_weights(BNInception(TINY), unrelated)


def test_a_trained_cnn_run_initialises_every_st_cnn_backbone(tmp_path):
    # The CPU profile's stand-in for ImageNet weights: the CNN cell's model.pt (or its run folder).
    cnn, _ = build_cub_model("cnn", width=TINY, input_size=64, num_classes=3)
    with torch.no_grad():
        cnn.backbone.conv2_3x3.weight.add_(1.0)  # unlike any fresh initialisation
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": 1, "cell": "x-cnn", "seed": 1, "state_dict": cnn.state_dict()}, run / "model.pt")
    for weights in (run / "model.pt", run):
        model, info = build_cub_model(
            "st_cnn",
            width=TINY,
            input_size=64,
            part_size=64,
            num_parts=2,
            num_classes=3,
            weights=weights,
            log=lambda s: None,
        )
        assert info.pretrained["missing"] == [] and info.pretrained["unexpected"] == []
        assert info.pretrained["classifier"] == ["classifier.bias", "classifier.weight"]
        assert info.pretrained["source"] == "cub_cnn"
        for backbone in model.backbones():
            assert torch.equal(backbone.conv2_3x3.weight, cnn.backbone.conv2_3x3.weight)
    with pytest.raises(ValueError, match="another architecture or width"):
        build_cub_model(
            "st_cnn",
            width=2 * TINY,
            input_size=64,
            part_size=64,
            num_parts=2,
            num_classes=3,
            weights=run,
            log=lambda s: None,
        )


def test_torchvision_weights_load_into_the_feature_extractor(tmp_path):
    reference = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("googlenet")
    report = load_backbone_weights(backbone, path)
    assert report.classifier == ["fc.bias", "fc.weight"] and not report.missing and not report.unexpected
    assert backbone.out_channels == 1024
    with pytest.raises(ValueError, match="bn_inception only"):
        build_backbone("googlenet", width=0.5)


def test_the_part_picture_builds(tmp_path):
    model, _ = build_cub_model("st_cnn", width=TINY, input_size=128, part_size=64, num_parts=4)
    fig = part_figure(model, torch.rand(2, 3, 128, 128), titles=["a", "b"])
    assert len(fig.axes) == 2 * 5
    assert len(fig.axes[0].patches) == 4  # one box per transformer
    assert save_figure(fig, tmp_path / "parts.png").stat().st_size > 0


def test_pretrained_weights_bring_their_input_convention_or_are_refused(tmp_path):
    # The usual public BN-Inception weights are a port of the Caffe model: its 1000-way classifier
    # (last_linear) beside the Caffe layer names, trained on BGR 0-255 input minus a mean.
    caffe = tmp_path / "bn_inception_caffe_port.pth"
    state = BNInception(TINY).state_dict()
    torch.save(
        {**state, "last_linear.weight": torch.zeros(1000, 64), "last_linear.bias": torch.zeros(1000)}, caffe
    )
    said = []
    _, info = build_cub_model("cnn", width=TINY, input_size=64, weights=caffe, log=said.append)
    assert info.convention == "caffe_bgr" and any("input convention caffe_bgr" in line for line in said)
    # Given explicitly, the setting wins, and the mismatch is said.
    said.clear()
    _, info = build_cub_model(
        "cnn", width=TINY, input_size=64, weights=caffe, input_convention="imagenet", log=said.append
    )
    assert info.convention == "imagenet" and any(line.startswith("WARNING") for line in said)
    # Weights whose keys do not tell: refused, with the fix, rather than normalised as a guess.
    bare = tmp_path / "bn_inception_no_classifier.pth"
    torch.save(state, bare)
    with pytest.raises(
        ValueError, match=r"cannot tell which input convention.*model.input_convention=caffe_bgr"
    ):
        build_cub_model("cnn", width=TINY, input_size=64, weights=bare, log=lambda s: None)
    # From scratch: the backbone's default; torchvision's own weights: torchvision's convention.
    assert build_cub_model("cnn", width=TINY, input_size=64)[1].convention == "imagenet"
    googlenet = tmp_path / "googlenet.pth"
    torch.save(
        torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).state_dict(),
        googlenet,
    )
    _, info = build_cub_model(
        "cnn", backbone="googlenet", input_size=64, weights=googlenet, log=lambda s: None
    )
    assert info.convention == "tf_inception"
