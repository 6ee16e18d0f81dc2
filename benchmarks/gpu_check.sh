#!/usr/bin/env bash
# The CUDA path end to end on one GPU, in about five minutes on an H100:
#   1. stage 1 and stage 2 trained in bf16 on the built-in data (the demo's tiny configs),
#   2. the pipeline assembled and sampled on the GPU for held-out captions, scored by the checker,
#   3. sampling speed (KV cache against recomputation) at the demo's size and at configs/stage2_gpu.yaml's,
#   4. training throughput, peak memory and MFU of both stages at the tiny, mid and real (gpu) sizes.
#     bash benchmarks/gpu_check.sh [OUTPUT_DIR]        (default outputs/gpu_check)
# Every step writes its log (and JSON where it has figures) into OUTPUT_DIR; a failed step is reported
# and the independent ones after it still run. A step still running after STEP_TIMEOUT seconds (default
# 900) is killed with its child processes (SIGKILL: the train scripts treat SIGTERM as "checkpoint and
# stop", which can take a while) and counts as failed. Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script checks the GPU path')" || exit 1
fi
stage1_steps=${STAGE1_STEPS:-1000}
stage2_steps=${STAGE2_STEPS:-1200}
failed=0

step() {  # step NAME COMMAND...: run, log to $out/NAME.log, report the time and the outcome
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    if timeout --signal KILL "${STEP_TIMEOUT:-900}" "$@" >"$out/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start)) s"
        tail -n "${TAIL_LINES:-25}" "$out/$name.log"
    else
        echo "   FAILED (exit $?) after $((SECONDS - start)) s; the end of $out/$name.log:"
        tail -n 40 "$out/$name.log"
        failed=$((failed + 1))
        return 1
    fi
}

python -c "import torch; print('torch', torch.__version__, '| device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
launch="accelerate launch --config_file configs/accelerate/single_gpu.yaml"
precision=${PRECISION:-bf16}

if step stage1_train $launch stage1_vqvae/train.py --config configs/stage1_tiny.yaml \
        --train.output_dir "$out/stage1" --train.max_steps "$stage1_steps" --train.mixed_precision "$precision" \
    && step stage1_eval python -m stage1_vqvae.evaluate --model "$out/stage1/vqvae" \
        --config configs/stage1_tiny.yaml --output_json "$out/stage1_eval.json" \
    && step stage2_train $launch stage2_transformer/train.py --config configs/stage2_tiny.yaml \
        --vqvae "$out/stage1/vqvae" --train.output_dir "$out/stage2" --train.max_steps "$stage2_steps" \
        --train.mixed_precision "$precision" \
    && step assemble python -m pipeline.assemble --stage1 "$out/stage1" --stage2 "$out/stage2" \
        --out "$out/pipeline" \
    && step heldout python scripts/demo_heldout.py --model "$out/pipeline" --out "$out/heldout"; then
    for run in stage1 stage2; do echo "$run, last training log: $(grep '"train/' "$out/$run/metrics.jsonl" | tail -n 1)"; done
fi
step sampling_speed_demo python benchmarks/sampling_speed.py --out "$out/sampling_speed_demo.json"
step train_throughput python benchmarks/train_throughput.py --sizes ${THROUGHPUT_SIZES:-tiny mid gpu} \
    --out "$out/train_throughput.json"
step sampling_speed_gpu python benchmarks/sampling_speed.py --size gpu --batch-sizes 1 8 --repeats 1 \
    --out "$out/sampling_speed_gpu.json"
echo "== $failed step(s) failed; logs and JSON in $out"
exit "$failed"
