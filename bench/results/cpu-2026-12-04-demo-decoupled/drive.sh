#!/usr/bin/env bash
# after the init run $1 finishes: cRT, LWS, post-hoc evaluations (commands of bench/demo_decoupled.sh)
set -uo pipefail
out=/tmp/metrics_demo; init=$1
cd /work/wt/metrics
lpt="env PYTHONPATH=src /work/main/.venv/bin/python -m lpt"
while [ ! -f "$out/$init/metrics.json" ]; do sleep 10; done
linear_head="model.head=linear loss.scale=1"
kang="phases=[phase1] phase1.sampling=balanced data.samples_per_class=4 loss.name=ce loss.label_smoothing=0 phase1.lr=0.1 phase1.weight_decay=0.0005"
head=""; [ "$init" = vpt_linear ] && head=$linear_head
data=(source=list "root=$out/data" "train_list=$out/data/train.txt" "test_list=$out/data/test.txt" "val_list=$out/data/val.txt")
s=$(date +%s); $lpt train --config demo --out "$out/${init}_crt" --threads 1 progress=false method=crt init="$out/$init" $kang phase1.epochs=10 $head > "$out/${init}_crt.log" 2>&1; echo "${init}_crt $(( $(date +%s) - s )) s" >> $out/seconds.txt
s=$(date +%s); $lpt train --config demo --out "$out/${init}_lws" --threads 1 progress=false method=lws init="$out/$init" $kang phase1.epochs=5 $head > "$out/${init}_lws.log" 2>&1; echo "${init}_lws $(( $(date +%s) - s )) s" >> $out/seconds.txt
$lpt --threads 1 eval --run "$out/$init" --json --data "${data[@]}" --posthoc-tau auto > "$out/${init}_posthoc_auto.json" 2> "$out/${init}_posthoc_auto.err"
if [ "$init" = vpt_linear ]; then
  $lpt --threads 1 eval --run "$out/$init" --json --data "${data[@]}" --tau-norm auto > "$out/${init}_tau_norm_auto.json" 2> "$out/${init}_tau_norm_auto.err"
fi
$lpt --threads 1 eval --run "$out/$init" --json --posthoc-tau 1 > "$out/${init}_posthoc_1.json" 2> "$out/${init}_posthoc_1.err"
echo done > "$out/${init}_done"
