#!/usr/bin/env bash
# Every method of lpt on the demo task (Fashion-MNIST-LT, imbalance 100; the shipped demo_vit_glyphs; CPU), then one
# table: bash bench/demo_methods.sh OUT_DIR [lpt command]. Each run is the demo preset with the method's overrides;
# one-stage methods train the demo's phase-1 schedule (8 epochs, batch 64, lr 0.04). Raw output: OUT_DIR/*.log.
# The linear probe is `lpt demo`'s (lpt.cli.DEMO_LINEAR_PROBE, read with $PYTHON, default python).
set -euo pipefail
out=${1:?usage: bash bench/demo_methods.sh OUT_DIR [lpt command]}
lpt=${2:-lpt}
one_stage="phases=[phase1] model.prompt_len=0"
probe=$("${PYTHON:-python}" -c "from lpt.cli import DEMO_LINEAR_PROBE as p; print(' '.join(p))")  # lpt demo's probe
declare -A runs=(
  [01_linear_probe]="$probe"
  [02_vpt]="method=vpt phases=[phase1]"
  [03_lora]="method=peft $one_stage model.peft=[lora]"
  [04_adaptformer]="method=peft $one_stage model.peft=[adaptformer]"
  [05_ssf]="method=peft $one_stage model.peft=[ssf]"
  [06_bitfit]="method=peft $one_stage model.peft=[bitfit]"
  [07_full]="method=full $one_stage"
  [08_lift]="method=peft $one_stage model.peft=[adaptformer] model.head_init=class_mean model.feature_dropout=0 loss.name=la loss.scale=25 loss.label_smoothing=0 phase1.sampling=instance tta=crops tta_expand=3"
  [09_lpt]=""
  [10_lpt_adaptformer]="model.peft=[adaptformer]"
  # LIFT+ (presets lift_plus_*) scaled to 28 px: its minimalist crops, bicubic, test resize 28 + 28 // 7, five crops of
  # 28 + 3 (24 at 224), 5 epochs at its lr 0.02 for the batch (0.08 per 256 images at the demo's batch of 64)
  [11_lift_plus]="method=peft $one_stage model.peft=[adaptformer] model.head_init=class_mean model.feature_dropout=0 loss.name=la loss.scale=25 loss.label_smoothing=0 phase1.sampling=instance data.train_aug=mda data.interpolation=bicubic data.test_resize=32 phase1.epochs=5 phase1.lr=0.08 tta=crops tta_expand=3"
)
mkdir -p "$out"
for name in $(printf '%s\n' "${!runs[@]}" | sort); do
  start=$(date +%s)
  # shellcheck disable=SC2086
  $lpt train --config demo --out "$out/$name" --threads 2 progress=false ${runs[$name]} > "$out/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s" | tee -a "$out/seconds.txt"
done
$lpt compare "$out"/[0-9]*/ --out "$out/table"
