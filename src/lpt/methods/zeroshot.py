"""Zero-shot CLIP: the classifier is the class names' text embeddings and nothing trains.

It is the first row of every CLIP comparison: what the image and text towers give before any
long-tailed data is seen (LIFT's ``ZeroShotCLIP``: cosine of the projected image embedding with
each class's text embedding). ``lpt eval --zero-shot --config PRESET`` sets it up.
"""

from __future__ import annotations

from lpt.config import Config, ConfigError
from lpt.methods.base import Method

ZERO_SHOT_OVERRIDES = ["method=zeroshot", "phases=[]", "model.prompt_len=0", "model.peft=[]",
                       "model.head_init=text", "model.projection=true", "model.head=cosine",
                       "tta=none"]  # LIFT's zero-shot CLIP: no test-time ensembling (configs/model/zsclip_*.yaml)


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
