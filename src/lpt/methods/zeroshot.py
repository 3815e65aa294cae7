"""Zero-shot CLIP: the classifier is the class names' text embeddings and nothing trains.

It is the first row of every CLIP comparison: what the image and text towers give before any
long-tailed data is seen (LIFT's ``ZeroShotCLIP``: cosine of the projected image embedding with
each class's text embedding). ``lpt eval --zero-shot --config PRESET`` sets it up.
"""

from __future__ import annotations

from lpt.config import Config, ConfigError, load_config
from lpt.methods.base import Method

ZERO_SHOT_OVERRIDES = ["method=zeroshot", "phases=[]", "model.prompt_len=0", "model.peft=[]",
                       "model.head_init=text", "model.projection=true", "model.head=cosine",
                       "tta=none"]  # LIFT's zero-shot CLIP: no test-time ensembling (configs/model/zsclip_*.yaml)


def clip_eval_geometry(img_size: int) -> list[str]:
    """CLIP's own evaluation transform at ``img_size``: the shorter side resized to img_size, bicubic, then the
    centre crop (OpenAI CLIP's ``_transform(n_px)``, as vendored in shijxcs/LIFT@661ead9 clip/clip.py:74-81), so
    that zero-shot gives the number CLIP papers report, not the training preset's 256-pixel resize."""
    return [f"data.test_resize={img_size}", "data.test_resize_mode=shorter", "data.interpolation=bicubic"]


def zero_shot_config(preset_or_path: str, overrides: list[str]) -> Config:
    """The zero-shot run of a CLIP preset: :data:`ZERO_SHOT_OVERRIDES` and CLIP's evaluation geometry at the
    resolved ``data.img_size``, then ``overrides`` (which win over both)."""
    img_size = load_config(preset_or_path, ZERO_SHOT_OVERRIDES + overrides).data.img_size
    return load_config(preset_or_path, ZERO_SHOT_OVERRIDES + clip_eval_geometry(img_size) + overrides)


class ZeroShot(Method):
    name = "zeroshot"
    label = "zero-shot"
    phases = ()
    prompts = False

    @classmethod
    def check(cls, cfg: Config) -> None:
        if cfg.phases:
            raise ConfigError(f"method 'zeroshot' trains nothing: set phases=[] (got {cfg.phases!r})")
        m = cfg.model
        if m.peft or m.head_init != "text" or not m.projection or m.head != "cosine":
            raise ConfigError("method 'zeroshot' is CLIP's own classifier: it needs model.peft=[], "
                              "model.head_init=text, model.projection=true and model.head=cosine "
                              "(lpt eval --zero-shot sets them)")
        super().check(cfg)
