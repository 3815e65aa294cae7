"""lpt: long-tailed prompt tuning (Dong et al., ICLR 2023) of frozen pretrained Vision Transformers."""

__version__ = "0.1.0"
