#!/usr/bin/env bash
# data.decode on a GPU machine, in one go (issue 15, item 4; not yet run): for synthetic JPEGs of Places365's
# size (256 x 256) and iNaturalist's (800 x 600), both quality 90,
#   1. bench/loader.py: images/s of the training loader per decode path (exact, fast, gpu) with the batches
#      finished on the GPU as the trainer finishes them (normalised; decoded there under gpu), at 1 and at
#      WORKERS loader processes per stream;
#   2. bench/decode_diff.py: how far fast's crops (CPU) and gpu's (nvJPEG) are from exact's;
#   3. bench/throughput.py: the model-only rate of LPT phase 1 and phase 2 training steps (images on the GPU);
#   4. lpt train --config places_lt end to end on the same JPEGs, per decode path (2 epochs a phase: the second is
#      the steady rate, the first holds the loader processes' start and CUDA's warm-up), to set against step 3.
# ViT-B/16 with random weights, 224 px, bf16 (the preset's), batch 256 per stream as in the paper.
#
#   bash bench/gpu_decode.sh OUT_DIR [WORKERS] [STEPS]   # lpt importable; WORKERS default (cores - 2) / 2
#   STEPS: any of data loader diff throughput train (default all, in that order); each command has a 300 s limit
#   SIZES (default "256x256 800x600") and DECODES (default "exact fast gpu") narrow the sweep.
#   A rehearsal on a CPU machine (every command, tiny): DEVICE=cpu BACKBONE=vit_tiny_patch16_224 IMAGES=96 BATCH=16 \
#       bash bench/gpu_decode.sh OUT_DIR 1
#
# The built cropped decoder, src/lpt/data/_jpegcrop*.so, is git-ignored: a copy of the tree needs it carried along or
# rebuilt (make install), or fast decodes whole images; gpu.txt says which.
# Writes OUT_DIR/gpu.txt, loader.jsonl, decode_diff.jsonl, throughput.jsonl, train.jsonl (every epoch record of the
# runs, images/s included, with the size and decode), train_<size>_<decode>/ (each run's directory), errors.log and
# commands.txt (every command as run). LPT="python3 -m lpt" where lpt is on PYTHONPATH with no console script.
set -u
out=${1:?usage: bench/gpu_decode.sh OUT_DIR [WORKERS] [STEPS]}
workers=${2:-$(( ($(nproc) - 2) / 2 ))}
steps=${3:-data loader diff throughput train}
here=$(dirname "$0")
py=${PYTHON:-python}
lpt=${LPT:-lpt}
mkdir -p "$out"
read -r -a sizes <<<"${SIZES:-256x256 800x600}"
read -r -a decodes <<<"${DECODES:-exact fast gpu}"
images=${IMAGES:-6144}
device=${DEVICE:-cuda}
backbone=${BACKBONE:-vit_base_patch16_224}
batch=${BATCH:-256}

run() {  # one command, logged, time-limited; a failure is recorded and the sweep goes on
    echo "$*" >>"$out/commands.txt"
    timeout 300 "$@" 2>>"$out/errors.log" || echo "{\"failed\": \"$*\"}" | tee -a "$out/errors.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"; } \
    | tee "$out/gpu.txt"
"$py" -c "import torch, torchvision, simplejpeg; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'simplejpeg', simplejpeg.__version__, 'cpu cores', __import__('os').cpu_count())" \
    | tee -a "$out/gpu.txt"
"$py" -c "from lpt.data.decode import whole_decode_note as n; print('data.decode=fast:', n() or 'cropped decoder built')" \
    | tee -a "$out/gpu.txt"

for size in "${sizes[@]}"; do
    data="$out/jpeg_$size"
    case " $steps " in *" data "*)
        [ -f "$data/train.txt" ] || run "$py" "$here/synthetic_images.py" "$data" --images "$images" --size "$size";;
    esac
    case " $steps " in *" loader "*)
        run "$py" "$here/loader.py" --root "$data" --size "$size" --workers 1 "$workers" --decode "${decodes[@]}" \
            --device "$device" --batch "$batch" --steps 15 >>"$out/loader.jsonl"
        tail -n 6 "$out/loader.jsonl";;
    esac
    case " $steps " in *" diff "*)
        run "$py" "$here/decode_diff.py" --size "$size" --images 60 --keys 3 --device "$device" >>"$out/decode_diff.jsonl";;
    esac
done

case " $steps " in *" throughput "*)
    for method in lpt1 lpt2; do
        run "$py" "$here/throughput.py" --method "$method" --mode train --backbone "$backbone" --img 224 \
            --batch "$batch" --device "$device" --precision bf16 >>"$out/throughput.jsonl"
        tail -n 1 "$out/throughput.jsonl"
    done;;
esac

case " $steps " in *" train "*)
    : >"$out/train.jsonl"  # this sweep's runs only, also when the step is run again
    for size in "${sizes[@]}"; do
        data="$out/jpeg_$size"
        for decode in "${decodes[@]}"; do
            # shellcheck disable=SC2086  # LPT may be a command with arguments, e.g. "python3 -m lpt"
            run $lpt train --config places_lt --out "$out/train_${size}_$decode" --overwrite \
                "data.root=$data" "data.train_list=$data/train.txt" "data.test_list=$data/test.txt" \
                model.pretrained=false "model.backbone=$backbone" phase1.epochs=2 phase2.epochs=2 \
                "phase1.batch_size=$batch" "phase2.batch_size=$batch" "eval_batch_size=$batch" "device=$device" \
                "data.num_workers=$workers" "data.decode=$decode" progress=false
            grep -h '"epoch"' "$out/train_${size}_$decode/metrics.jsonl" \
                | sed "s/^{/{\"size\": \"$size\", \"decode\": \"$decode\", /" | tee -a "$out/train.jsonl"
        done
    done;;
esac
