"""Test-time ensembling (config key ``tta``): the views, their averaged logits, LIFT's five crops, the config."""

import numpy as np
import pytest
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from lpt.cli import main
from lpt.config import ConfigError, DataConfig, load_config
from lpt.data.transforms import BatchNormalize, FiveCrops, build_transform
from lpt.evaluation import VIEWS, ensemble_logits, evaluate, predictions, tta_outputs
from lpt.model import LPT

CPU = torch.device("cpu")


def _tiny_lpt() -> LPT:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=28, patch_size=7, embed_dim=32, depth=3, num_heads=2, num_classes=0)
    model = LPT(vit, num_classes=6, prompt_len=2, pool_size=4, split_block=1, top_k=2)
    model.set_phase(2)
    return model.eval()


class _FirstRow:
    """A stand-in model: its logits are the first four pixels of the first row, its groups the first two."""

    def __init__(self):
        self.training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def forward_train(self, images):
        row = images[:, 0, 0]
        return {"logits": row[:, :4], "groups": row[:, :2].long()}


def test_flip_ensemble_is_the_mean_of_the_logits_of_the_image_and_its_mirror():
    model = _tiny_lpt()
    x = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain, mirrored = model.forward_train(x), model.forward_train(x.flip(-1))
        mean, first = ensemble_logits(model, VIEWS["flip"](x))
    reference = (plain["logits"] + mirrored["logits"]) / 2
    torch.testing.assert_close(mean, reference, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(plain["logits"], mirrored["logits"], atol=1e-3)  # the mirror is another view
    assert torch.equal(first["groups"], plain["groups"])
    out = evaluate(model, [(img, 0) for img in x], tta_outputs("flip"), device=CPU, batch_size=2, progress=False)
    assert out["preds"].tolist() == reference.argmax(1).tolist()
    assert out["top5"].tolist() == reference.topk(5, dim=1).indices.tolist()
    assert out["groups"].tolist() == plain["groups"].tolist()  # matched groups of the plain view


def test_ensemble_ranks_the_mean_not_either_view():
    row = torch.tensor([4.0, 0.0, 3.0, 0.5, 4.0, 3.0, 1.0, 0.0])  # mirrored: [0, 1, 3, 4, ...]
    images = row.expand(1, 3, 1, 8)
    out = tta_outputs("flip")(_FirstRow(), images)
    # view logits [4, 0, 3, .5] (argmax 0) and [0, 1, 3, 4] (argmax 3); mean [2, .5, 3, 2.25]
    assert out["preds"].tolist() == [2] and out["top5"].tolist() == [[2, 3, 0, 1]]
    assert out["groups"].tolist() == [[4, 0]]
    assert predictions(_FirstRow(), images)["preds"].tolist() == [0]
    assert tta_outputs("none") is predictions
    with pytest.raises(ValueError, match="tta 'fivecrop': choose from none, flip, crops"):
        tta_outputs("fivecrop")


def test_crops_ensemble_is_the_mean_over_the_five_views():
    model = _tiny_lpt()
    x = torch.randn(3, 5, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mean, first = ensemble_logits(model, VIEWS["crops"](x))
        each = [model.forward_train(x[:, k]) for k in range(5)]
    torch.testing.assert_close(mean, sum(o["logits"] for o in each) / 5, atol=1e-6, rtol=1e-6)
    assert torch.equal(first["groups"], each[0]["groups"])  # the centre crop


@pytest.mark.parametrize("height, width, boxes", [
    (6, 9, [(1, 2), (0, 0), (0, 5), (2, 0), (2, 5)]),  # centre offsets rounded as torchvision rounds: 1.5 -> 2
    (7, 10, [(2, 3), (0, 0), (0, 6), (3, 0), (3, 6)]),  # 2.5 -> 2
    (4, 4, [(0, 0)] * 5),
])
def test_five_crops_are_the_centre_and_the_four_corners(height, width, boxes):
    image = torch.arange(3 * height * width).reshape(3, height, width)
    views = FiveCrops(4)(image)
    assert type(views) is torch.Tensor and views.shape == (5, 3, 4, 4)
    for view, (top, left) in zip(views, boxes):  # centre, then top-left, top-right, bottom-left, bottom-right
        assert torch.equal(view, image[:, top:top + 4, left:left + 4])
    with pytest.raises(ValueError, match="bigger than input size"):
        FiveCrops(5)(image[:, :4])


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels.float() / 255 - 0.5) / 0.5


def test_crops_transform_resizes_by_the_expansion_and_takes_the_hand_built_boxes():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 18, 3), dtype=np.uint8))  # 18 wide
    cfg = DataConfig(img_size=4, test_resize=9)  # test_resize plays no part in the crops
    views = build_transform(cfg, train=False, expand=2)(img)
    resized = T.functional.pil_to_tensor(T.Resize(6, interpolation=InterpolationMode.BICUBIC, antialias=True)(img))
    assert resized.shape == (3, 6, 9)  # shorter side to img_size + expand
    boxes = [(1, 2), (0, 0), (0, 5), (2, 0), (2, 5)]
    assert type(views) is torch.Tensor and views.shape == (5, 3, 4, 4)
    for view, (top, left) in zip(views, boxes):
        torch.testing.assert_close(view, _normalised(resized[:, top:top + 4, left:left + 4]))
    raw = build_transform(cfg, train=False, normalize=False, expand=2)(img)
    assert raw.dtype == torch.uint8 and torch.equal(BatchNormalize(cfg)(raw), views)  # the same arithmetic


@pytest.mark.parametrize("mode, resize", [("shorter", 16), ("square", (16, 16))])
def test_crops_transform_is_lifts_resize_and_fivecrop(mode, resize):
    # LIFT (shijxcs/LIFT trainer.py:117-122): Resize(resolution + expand), FiveCrop(resolution) -> TL, TR, BL, BR, C
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8))
    cfg = DataConfig(img_size=12, test_resize_mode=mode, interpolation="bilinear")  # LIFT's default interpolation
    tl, tr, bl, br, centre = T.FiveCrop(12)(T.Resize(resize)(img))
    expected = torch.stack([_normalised(T.functional.pil_to_tensor(c)) for c in (centre, tl, tr, bl, br)])
    torch.testing.assert_close(build_transform(cfg, train=False, expand=4)(img), expected)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the crops differ


def test_tta_config_defaults_choices_and_errors():
    cfg = load_config("demo")
    assert cfg.tta == "none" and cfg.tta_expand == 24
    assert load_config("demo", ["tta=crops", "tta_expand=4"]).tta_expand == 4
    with pytest.raises(ConfigError, match="config key 'tta' is 'tencrop'; expected one of none, flip, crops"):
        load_config("demo", ["tta=tencrop"])
    with pytest.raises(ConfigError, match="config key 'tta_expand' is -1; expected 0 or more"):
        load_config("demo", ["tta_expand=-1"])


def test_config_show_prints_tta(capsys):
    assert main(["config", "--show", "demo", "tta=flip"]) == 0
    lines = {line.split(":", 1)[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["tta"].startswith("tta: flip  ") and "# test-time ensembling" in lines["tta"]
    assert lines["tta_expand"].startswith("tta_expand: 24  ") and "# tta=crops" in lines["tta_expand"]
