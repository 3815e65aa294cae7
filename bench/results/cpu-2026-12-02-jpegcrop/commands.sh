#!/usr/bin/env bash
# The commands behind this folder's numbers, run from the repository root after `make install` (which built
# lpt.data._jpegcrop against Debian's libjpeg62-turbo 2.1.5). Same commands as cpu-2026-12-02-loader, the run
# before the cropped decoder: exact, fast and fast-whole (fast without the cropped decoder: bench/loader.py) alternate within one process, three times each.
set -u
out=bench/results/cpu-2026-12-02-jpegcrop
py=.venv/bin/python
$py -c "from lpt.data import decode; print('cropped decoder built:', decode.whole_decode_note() is None)" \
    | tee "$out/uptime.txt"
uptime | tee -a "$out/uptime.txt"
$py bench/loader.py --size 256x256 --workers 0 --decode exact fast fast-whole exact fast fast-whole exact fast fast-whole --batch 64 --steps 20 \
    --images 1500 | tee "$out/loader_256x256.jsonl"
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast fast-whole exact fast fast-whole exact fast fast-whole --batch 32 --steps 20 \
    --images 800 | tee "$out/loader_800x600.jsonl"
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast fast-whole exact fast fast-whole exact fast fast-whole --batch 32 --steps 20 \
    --images 800 --set data.interpolation=bicubic | tee "$out/loader_800x600_bicubic.jsonl"
$py bench/loader.py --size 800x600 --workers 1 --decode exact fast exact fast --batch 32 --steps 20 \
    --images 800 | tee "$out/loader_800x600_workers1.jsonl"
$py bench/decode_diff.py --size 800x600 --images 60 --keys 3 | tee "$out/decode_diff.jsonl"
uptime | tee -a "$out/uptime.txt"
# Afterwards, two more runs of the 800 x 600 row: one on the quiet machine, one with the other core kept busy.
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast fast-whole exact fast fast-whole exact fast fast-whole \
    --batch 32 --steps 20 --images 800 > "$out/loader_800x600_rerun.jsonl"
(timeout 120 python3 -c "while True: pass" &)
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast fast-whole exact fast fast-whole exact fast fast-whole \
    --batch 32 --steps 20 --images 800 > "$out/loader_800x600_other_core_busy.jsonl"
