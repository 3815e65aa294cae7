"""lpt: long-tailed prompt tuning (Dong et al., ICLR 2023) of frozen pretrained Vision Transformers.

>>> import lpt
>>> run = lpt.load_run("runs/demo")          # model in eval mode, config, class names
>>> run.predict(["cat.jpg"])                  # probabilities [N, C], as `lpt predict` prints them
>>> run.model(run.transform(image)[None])     # cosine logits [1, C] (unscaled)
>>> run.model.match(images)                   # selected groups [B, k], most similar first (phase 2)
"""

from lpt.version import __version__
from lpt.model import LPT, create_backbone
from lpt.model.official import load_official_checkpoint
from lpt.run.load import Run, evaluate_run, load_run
from lpt.run.train import train

__all__ = ["LPT", "Run", "create_backbone", "evaluate_run", "load_official_checkpoint", "load_run", "train",
           "__version__"]
