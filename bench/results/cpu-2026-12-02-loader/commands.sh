#!/usr/bin/env bash
# The commands behind this folder's numbers, run from the repository root with lpt installed (make install).
# exact and fast alternate within one process (three times each), so that other jobs on the machine weigh on both.
set -u
out=bench/results/cpu-2026-12-02-loader
py=.venv/bin/python
uptime | tee "$out/uptime.txt"
$py bench/loader.py --size 256x256 --workers 0 --decode exact fast exact fast exact fast --batch 64 --steps 20 \
    --images 1500 | tee "$out/loader_256x256.jsonl"
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast exact fast exact fast --batch 32 --steps 20 \
    --images 800 | tee "$out/loader_800x600.jsonl"
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast exact fast exact fast --batch 32 --steps 20 \
    --images 800 --set data.interpolation=bicubic | tee "$out/loader_800x600_bicubic.jsonl"
$py bench/loader.py --size 800x600 --workers 1 --decode exact fast exact fast --batch 32 --steps 20 \
    --images 800 | tee "$out/loader_800x600_workers1.jsonl"
$py bench/decode_diff.py --size 256x256 --images 60 --keys 3 | tee "$out/decode_diff.jsonl"
$py bench/decode_diff.py --size 800x600 --images 60 --keys 3 | tee -a "$out/decode_diff.jsonl"
$py bench/decode_diff.py --size 800x600 --images 60 --keys 3 --set data.interpolation=bicubic \
    | tee -a "$out/decode_diff.jsonl"
uptime | tee -a "$out/uptime.txt"
