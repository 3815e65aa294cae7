"""Where fast's time goes on the 800 x 600 JPEGs: one-off probe behind this folder's README (run from the repository
root: .venv/bin/python bench/results/cpu-2026-12-02-loader/decode_parts.py). Per image, best of 5 interleaved passes
over 200 of bench/loader.py's JPEGs, one thread; the shares of RandomResizedCrop boxes by DCT reduction at 224 px."""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image

sys.path.insert(0, "bench")
from loader import write_images  # noqa: E402

from lpt.config import load_config  # noqa: E402
from lpt.data.decode import CropDraw, reduction_for  # noqa: E402

torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as tmp:
    write_images(Path(tmp), 200, (800, 600), 10)
    paths = sorted(Path(tmp, "img").glob("*.jpg"))
    datas = [p.read_bytes() for p in paths]

    def pil_full(i):
        with Image.open(paths[i]) as im:
            im.load()

    parts = {
        "pil_full_decode": pil_full,
        "simplejpeg_full": lambda i: simplejpeg.decode_jpeg(datas[i]),
        "simplejpeg_half": lambda i: simplejpeg.decode_jpeg(datas[i], min_height=300, min_width=400),
        "simplejpeg_eighth": lambda i: simplejpeg.decode_jpeg(datas[i], min_height=75, min_width=100),
    }
    best = {k: 1e9 for k in parts}
    for _ in range(5):
        for k, f in parts.items():
            start = time.perf_counter()
            for i in range(len(paths)):
                f(i)
            best[k] = min(best[k], (time.perf_counter() - start) / len(paths) * 1000)
draw = CropDraw(load_config("places_lt").data)
torch.manual_seed(0)
reductions = [reduction_for(draw(600, 800)[0], 224) for _ in range(10000)]
print(json.dumps({"ms_per_image": {k: round(v, 3) for k, v in best.items()},
                  "box_share_by_reduction": {r: reductions.count(r) / len(reductions) for r in sorted(set(reductions))},
                  "jpeg_kb": round(float(np.mean([len(d) for d in datas])) / 1024, 1)}))
