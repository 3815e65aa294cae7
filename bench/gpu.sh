#!/usr/bin/env bash
# Every GPU number in README's performance section, in one go: throughput.py for each method in
# training and evaluation at the paper's batch (256 per stream; LPT steps take two batches), with and
# without torch.compile for LPT phase 2, then compare.py (lpt against the naive yardstick).
#
#   bash bench/gpu.sh OUT_DIR [BACKBONE]      # needs lpt importable (pip install -e . or PYTHONPATH=src)
#
# Writes OUT_DIR/throughput.jsonl (one JSON line per configuration) and OUT_DIR/compare.log.
set -u
out=${1:?usage: bench/gpu.sh OUT_DIR [BACKBONE]}
backbone=${2:-vit_base_patch16_224}
mkdir -p "$out"
here=$(dirname "$0")
py=${PYTHON:-python}
common=(--backbone "$backbone" --img 224 --batch 256 --device cuda --precision bf16)

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$out/gpu.txt"

run() {  # one configuration; a failure (out of memory, say) is recorded and the sweep goes on
    if ! "$py" "$here/throughput.py" "$@" >>"$out/throughput.jsonl" 2>>"$out/errors.log"; then
        echo "{\"failed\": \"$*\"}" >>"$out/throughput.jsonl"
    fi
    tail -n 1 "$out/throughput.jsonl"
}

for method in linear vpt lpt1 lpt2 full; do
    for mode in eval train; do
        run --method "$method" --mode "$mode" "${common[@]}"
    done
done
run --method lpt2 --mode eval "${common[@]}" --batch 1024
for mode in eval train; do
    run --method lpt2 --mode "$mode" "${common[@]}" --compile --warmup 5
done
"$py" "$here/compare.py" --backbone "$backbone" --img 224 --batch 128 --device cuda --precision bf16 \
    --repeats 20 --warmup 3 2>&1 | tee "$out/compare.log" | tail -n 3
