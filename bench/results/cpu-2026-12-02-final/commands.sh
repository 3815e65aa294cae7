#!/usr/bin/env bash
# The 800 x 600 row of cpu-2026-12-02-jpegcrop again, on the session's final code (the cropped decoder now built as
# _jpegcrop.abi3.so, Python's stable ABI; the same C source). Run from the repository root after `make install`.
set -u
out=bench/results/cpu-2026-12-02-final
py=.venv/bin/python
{ uptime; $py -c "from lpt.data import decode; print('cropped decoder built:', decode.whole_decode_note() is None, \
decode._jpegcrop.__file__.rsplit('/',1)[1])"; git rev-parse --short HEAD; } | tee "$out/uptime.txt"
$py bench/loader.py --size 800x600 --workers 0 --decode exact fast fast-whole exact fast fast-whole exact fast fast-whole \
    --batch 32 --steps 20 --images 800 | tee "$out/loader_800x600.jsonl"
uptime | tee -a "$out/uptime.txt"
