"""lpt: long-tailed prompt tuning (Dong et al., ICLR 2023) of frozen pretrained Vision Transformers.

>>> import lpt
>>> run = lpt.load_run("runs/demo")          # model in eval mode, config, class names
>>> run.model(images)                         # cosine logits [B, C]
>>> run.model.query(images)                   # phase-1 query [B, D]
>>> run.model.match(images)                   # selected groups [B, k], most similar first
"""

__version__ = "0.1.0"

from lpt.engine.runner import Run, evaluate_run, load_run, train  # noqa: E402
from lpt.model import LPT, create_backbone  # noqa: E402
from lpt.official import load_official_checkpoint  # noqa: E402

__all__ = ["LPT", "Run", "create_backbone", "evaluate_run", "load_official_checkpoint", "load_run", "train",
           "__version__"]
