#!/usr/bin/env bash
# Real captioned images at 32 px: get the emoji data (Twemoji + Noto), train stage 1 and stage 2, score
# the held-out (emoji, style) pairs, and draw held-out samples beside their true images
# (outputs/stage2_emoji32/heldout_samples.png). Rerunning resumes each stage from its latest checkpoint.
# About 55 min on a 2-core CPU with bf16 (stage 1 16 min, stage 2 38 min, measured one by one).
#   bash scripts/demo_emoji.sh
#   STAGE1_STEPS=4 STAGE2_STEPS=4 SAMPLES=16 bash scripts/demo_emoji.sh   # a quick end-to-end check
# SKIP_SETUP=1 uses the python on PATH instead of setting up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh
  export PATH="$PWD/.venv/bin:$PATH"
fi
export TOKENIZERS_PARALLELISM=false
# Without a GPU, `accelerate launch` runs the script with one CPU thread unless told otherwise.
THREADS="--num_cpu_threads_per_process $(nproc)"
OUT="${OUT:-outputs}"
STAGE1_FLAGS="--train.output_dir $OUT/stage1_emoji32 ${STAGE1_STEPS:+--train.max_steps $STAGE1_STEPS}"
STAGE2_FLAGS="--train.output_dir $OUT/stage2_emoji32 --vqvae $OUT/stage1_emoji32/vqvae ${STAGE2_STEPS:+--train.max_steps $STAGE2_STEPS}"

echo "== data: every emoji in two styles, 10% of the (emoji, style) pairs held out"
if [ ! -f data/emoji32/counts.json ]; then
  RESOLUTIONS=32 PYTHON=python bash scripts/get_emoji.sh
fi

echo "== stage 1: VQ-VAE image tokenizer (configs/stage1_emoji32.yaml)"
accelerate launch -q $THREADS stage1_vqvae/train.py --config configs/stage1_emoji32.yaml $STAGE1_FLAGS \
  --resume_from_checkpoint latest
python -m stage1_vqvae.evaluate --config configs/stage1_emoji32.yaml --model "$OUT/stage1_emoji32/vqvae"

echo "== stage 2: transformer prior p(codes | caption) (configs/stage2_emoji32.yaml)"
accelerate launch -q $THREADS stage2_transformer/train.py --config configs/stage2_emoji32.yaml $STAGE2_FLAGS \
  --resume_from_checkpoint latest

echo "== held-out pairs: style accuracy, retrieval, bits per image, diversity; the sample grid"
python -m stage2_transformer.evaluate --config configs/stage2_emoji32.yaml --run "$OUT/stage2_emoji32" \
  --heldout_style true --heldout_negative_style true --num_samples "${SAMPLES:-512}"

echo "== done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
echo "held-out samples beside their true images: $OUT/stage2_emoji32/heldout_samples.png"
