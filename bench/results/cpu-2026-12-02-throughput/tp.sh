#!/usr/bin/env bash
set -u
cd /work/snap2
for m in adaptformer lora ssf bitfit lpt_adaptformer1 lpt_adaptformer2; do
  for mode in eval train; do
    PYTHONPATH=/work/snap2/src /work/main/.venv/bin/python bench/throughput.py --method $m --mode $mode \
      --backbone vit_tiny_patch16_224 --img 224 --batch 32 --device cpu --precision fp32 --steps 5 --warmup 2 2>/dev/null | tail -1
  done
done
