#!/usr/bin/env bash
# The decoupled and post-hoc baselines on the demo task (Fashion-MNIST-LT, imbalance 100; demo_vit_glyphs; CPU):
# bash bench/demo_decoupled.sh OUT_DIR [lpt command]. Two runs to start from: the demo's LPT (cosine head) and VPT-Deep
# with a linear head on instance-balanced batches (the joint training Kang et al. decouple). On each: cRT and LWS with
# Kang et al.'s settings (classifier-balancing@f162ade config/ImageNet_LT/cls_crt.yaml, cls_lws.yaml: 10 / 5 epochs,
# class-aware sampler of 4 images per class, CE, SGD lr 0.2 at batch 512 = 0.1 per 256, weight decay 5e-4), and
# post-hoc logit adjustment with tau chosen on a validation split; tau-normalisation on the linear head only (a cosine
# head's weights are normalised already). The validation split is 100 images per class of the Fashion-MNIST training
# images the long-tail profile leaves out (bench/demo_val_split.py). Raw output: OUT_DIR/*.log, OUT_DIR/*.json.
set -euo pipefail
out=${1:?usage: bash bench/demo_decoupled.sh OUT_DIR [lpt command]}
lpt=${2:-lpt}
mkdir -p "$out"
"${PYTHON:-python}" "$(dirname "$0")/demo_val_split.py" "$out/data" 100
train() {  # name, overrides...
  local name=$1; shift
  start=$(date +%s)
  $lpt train --config demo --out "$out/$name" --threads 2 progress=false "$@" > "$out/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s" | tee -a "$out/seconds.txt"
}
linear_head="model.head=linear loss.scale=1"
kang="phases=[phase1] phase1.sampling=balanced data.samples_per_class=4 loss.name=ce loss.label_smoothing=0 phase1.lr=0.1 phase1.weight_decay=0.0005"
train lpt
# shellcheck disable=SC2086
train vpt_linear method=vpt "phases=[phase1]" $linear_head loss.name=ce loss.label_smoothing=0 phase1.sampling=instance
for init in lpt vpt_linear; do
  head=""; [ "$init" = vpt_linear ] && head=$linear_head
  # shellcheck disable=SC2086
  train "${init}_crt" method=crt init="$out/$init" $kang phase1.epochs=10 $head
  # shellcheck disable=SC2086
  train "${init}_lws" method=lws init="$out/$init" $kang phase1.epochs=5 $head
done
data=(source=list "root=$out/data" "train_list=$out/data/train.txt" "test_list=$out/data/test.txt"
      "val_list=$out/data/val.txt")
for init in lpt vpt_linear; do
  $lpt eval --run "$out/$init" --json --data "${data[@]}" --posthoc-tau auto > "$out/${init}_posthoc_auto.json"
  $lpt eval --run "$out/$init" --json --posthoc-tau 1 > "$out/${init}_posthoc_1.json"
done
$lpt eval --run "$out/vpt_linear" --json --data "${data[@]}" --tau-norm auto > "$out/vpt_linear_tau_norm_auto.json"
$lpt compare "$out"/lpt "$out"/vpt_linear "$out"/*_crt "$out"/*_lws --out "$out/table"
