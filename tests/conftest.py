"""Shared fixtures: tiny Fashion-MNIST-format data and a tiny ViT config for end-to-end runs."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array in IDX format (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(data)


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose bright band position depends on the class, plus noise: learnable but not trivial."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, y in enumerate(labels):
        images[i, 2 * y : 2 * y + 5, :] += 150
    return images.clip(0, 255).astype(np.uint8)


def write_tiny_fmnist(root):
    """A Fashion-MNIST-format folder: 40 training and 8 test images per class, 10 classes."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 40), ("t10k", 8)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", class_images(labels, rng))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory):
    return write_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="session")
def list_data(tmp_path_factory):
    """PNG images and 'relative/path label' lists: 10 classes, long-tailed training split, 4 val and 6 test
    images per class."""
    root = tmp_path_factory.mktemp("listdata")
    rng = np.random.default_rng(0)
    for split, counts in (("train", [30, 24, 18, 14, 10, 8, 6, 5, 4, 3]), ("val", [4] * 10), ("test", [6] * 10)):
        labels = np.repeat(np.arange(10), counts)
        lines = []
        for i, (image, label) in enumerate(zip(class_images(labels, rng), labels)):
            (root / split).mkdir(exist_ok=True)
            Image.fromarray(image).save(root / split / f"{i}.png")
            lines.append(f"{split}/{i}.png {label}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


TINY_MODEL = [  # a random ViT far smaller than the demo's bundled backbone
    "model.backbone=vit_tiny_patch16_224", "model.pretrained=false",
    "model.backbone_args={img_size: 28, patch_size: 7, depth: 3, embed_dim: 32, num_heads: 2}",
    "model.prompt_len=2", "model.pool_size=4", "model.split_block=1", "model.top_k=2",
]


def tiny_run_overrides(root, progress: bool = False) -> list[str]:
    """Overrides that turn the demo preset into a seconds-long run on the tiny data under ``root``."""
    return [
        f"data.root={root}", "data.imbalance_ratio=10", "data.max_per_class=40",
        *TINY_MODEL,
        "phase1.epochs=2", "phase1.batch_size=16", "phase1.lr=0.5",
        "phase2.epochs=1", "phase2.batch_size=16", "phase2.lr=0.5",
        "eval_batch_size=32", f"progress={str(progress).lower()}",
    ]


@pytest.fixture
def tiny_overrides(tiny_fmnist):
    return tiny_run_overrides(tiny_fmnist)


@pytest.fixture(scope="module")
def one_thread():
    """Tensors in some tests are tiny: one thread is fastest, and on a busy 2-core machine two threads
    are 50x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CLIP_DIM, CLIP_EMBED = 32, 16  # the tiny CLIP's image width and joint-space size
TINY_CLIP_CONFIG = {  # an open_clip model config: a 2-block ViT image tower and a 2-block text tower
    "embed_dim": CLIP_EMBED,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": CLIP_DIM, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> dict:
    """A random open_clip CLIP saved as one checkpoint, as a released CLIP is, and the overrides that make a config
    use it: the image tower as timm's CLIP ViT (timm's own filter converts it), the text tower through open_clip."""
    import json

    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip")
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # not CLIP's initial log(1 / 0.07), so that a scale read from elsewhere shows
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "clip.safetensors")
    overrides = [
        "model.backbone=vit_base_patch16_clip_224.openai", "model.pretrained=false", "model.split_block=1",
        f"model.checkpoint={folder / 'clip.safetensors'}", f"model.text={config}", "model.text_pretrained=",
        f"model.backbone_args={{img_size: 32, patch_size: 8, depth: 2, embed_dim: {CLIP_DIM}, num_heads: 2, "
        f"num_classes: {CLIP_EMBED}}}",
    ]
    return {"model": model.eval(), "checkpoint": folder / "clip.safetensors", "config": config,
            "overrides": overrides}


OPENAI_WIDTH = 64  # OpenAI's CLIP has 64-wide attention heads (open_clip's loader of its archives builds width // 64)


def tiny_openai_config(quick_gelu: bool) -> dict:
    """A small open_clip config of OpenAI's CLIP form: as open_clip's ViT-B-16 (no ``quick_gelu`` key: the weights
    decide) or ViT-B-16-quickgelu."""
    return {"embed_dim": CLIP_EMBED, **({"quick_gelu": True} if quick_gelu else {}),
            "vision_cfg": {"image_size": 32, "layers": 2, "width": OPENAI_WIDTH, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": OPENAI_WIDTH, "heads": 1, "layers": 2}}


@pytest.fixture(scope="session")
def tiny_openai_clip(tmp_path_factory) -> dict:
    """A random CLIP as OpenAI released them: QuickGELU, fp16 values, logit scale 100, a TorchScript archive
    ``ViT-B-16.pt``. With open_clip's QuickGELU model of it, its two configs (``plain``, ``quickgelu``) and the
    overrides that shrink a CLIP preset's towers to its size."""
    import copy
    import json
    import math
    import warnings

    import open_clip

    folder = tmp_path_factory.mktemp("openai_clip")
    configs = {}
    for kind in ("plain", "quickgelu"):
        configs[kind] = folder / f"tiny-openai-{kind}.json"
        configs[kind].write_text(json.dumps(tiny_openai_config(kind == "quickgelu")))
        open_clip.add_model_config(configs[kind])
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-openai-quickgelu").eval()
    with torch.no_grad():
        for tensor in model.parameters():  # fp16 values, as OpenAI released them: open_clip's loader of the
            tensor.copy_(tensor.half())    # archives rounds its layers to fp16, which then loses nothing
        model.logit_scale.fill_(math.log(100.0))  # OpenAI's trained temperature: logits are 100 x cosine
    archive, mask = copy.deepcopy(model), model.attn_mask
    del archive.attn_mask  # a buffer in open_clip's CLIP, an attribute (outside the state dict) in OpenAI's archives
    archive.attn_mask = mask
    with warnings.catch_warnings():  # torch deprecates writing TorchScript; OpenAI's releases are just that
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(archive).save(str(folder / "ViT-B-16.pt"))
    overrides = ["model.split_block=1", f"model.backbone_args={{img_size: 32, patch_size: 8, depth: 2, embed_dim: "
                 f"{OPENAI_WIDTH}, num_heads: 1, num_classes: {CLIP_EMBED}}}"]
    return {"model": model, "archive": folder / "ViT-B-16.pt", "configs": configs, "overrides": overrides}
