#!/usr/bin/env bash
# Real captioned images at 32 px: get the emoji data (Twemoji + Noto), train stage 1 (8x8 codes), the
# prior, and a CLIP re-ranker on the training pictures; score the held-out (emoji, style) pairs, one sample
# and the re-ranker's pick of 16; draw the picks beside their true images
# (outputs/stage2_emoji32_8x8/heldout_samples.png). Rerunning resumes each training from its latest checkpoint.
# The recipe that draws best on a CPU (configs/stage1_emoji32_8x8.yaml, stage2_emoji32_8x8.yaml,
# reranker_emoji32.yaml); the 16x16 reconstruction recipe is configs/stage1_emoji32.yaml + stage2_emoji32.yaml.
# 33 min from a fresh clone on a 2-core CPU with bf16 (set-up and data 1, stage 1 10, prior 11, re-ranker 8.5,
# scoring 3): held-out top-5 25.5% for one sample, 31.5% for the re-ranker's pick. 58 min on a 2-core CPU
# without native bf16, in fp32 (stage 1 23, prior 21.5): top-5 26.2% and 29.7% (docs/emoji.md).
#   bash scripts/demo_emoji.sh
#   STAGE1_STEPS=4 STAGE2_STEPS=4 RERANKER_STEPS=4 SAMPLES=16 bash scripts/demo_emoji.sh   # a quick check
#   PRIOR=stage2_emoji32_8x8_large bash scripts/demo_emoji.sh   # the 17.6M prior: about 85 min, top-5 38.8% picked
#   PRIOR=stage2_emoji32_gpu bash scripts/demo_emoji.sh   # on a GPU: the 92M-parameter prior, top-5 40.1% picked
#                                                         # (six seeds, one H200, with this demo's stage 1 and re-ranker)
# SKIP_SETUP=1 uses $PYTHON (default python) and the accelerate on PATH instead of setting up .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
mark=$start
took() {  # the time since the last call, so a slow stage shows which it is
  local now; now=$(date +%s)
  echo "   ($1: $(( (now - mark) / 60 )) min $(( (now - mark) % 60 )) s)"
  mark=$now
}
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh
  export PATH="$PWD/.venv/bin:$PATH"
fi
export TOKENIZERS_PARALLELISM=false
# Without a GPU, `accelerate launch` runs the script with one CPU thread unless told otherwise.
THREADS="--num_cpu_threads_per_process $(nproc)"
OUT="${OUT:-outputs}"
PYTHON="${PYTHON:-python}"
PRIOR="${PRIOR:-stage2_emoji32_8x8}"   # a stage-2 config of configs/ over the 8x8 codes
VQVAE="$OUT/stage1_emoji32_8x8/vqvae"
STAGE1_FLAGS="--train.output_dir $OUT/stage1_emoji32_8x8 ${STAGE1_STEPS:+--train.max_steps $STAGE1_STEPS}"
STAGE2_FLAGS="--train.output_dir $OUT/$PRIOR --vqvae $VQVAE ${STAGE2_STEPS:+--train.max_steps $STAGE2_STEPS}"
RERANKER_FLAGS="--train.output_dir $OUT/reranker_emoji32 --vqvae $VQVAE ${RERANKER_STEPS:+--train.max_steps $RERANKER_STEPS}"

echo "== data: every emoji in two styles, 10% of the (emoji, style) pairs held out"
if [ ! -f data/emoji32/counts.json ]; then
  RESOLUTIONS=32 PYTHON="$PYTHON" bash scripts/get_emoji.sh
fi
took "set-up and data"

echo "== stage 1: VQ-VAE image tokenizer, 8x8 codes (configs/stage1_emoji32_8x8.yaml)"
accelerate launch -q $THREADS stage1_vqvae/train.py --config configs/stage1_emoji32_8x8.yaml $STAGE1_FLAGS \
  --resume_from_checkpoint latest
"$PYTHON" -m stage1_vqvae.evaluate --config configs/stage1_emoji32_8x8.yaml --model "$VQVAE"
took "stage 1"

echo "== stage 2: transformer prior p(codes | caption) (configs/$PRIOR.yaml)"
accelerate launch -q $THREADS stage2_transformer/train.py --config "configs/$PRIOR.yaml" $STAGE2_FLAGS \
  --resume_from_checkpoint latest
took "prior"

echo "== re-ranker: a CLIP trained on the training pictures (configs/reranker_emoji32.yaml)"
accelerate launch -q $THREADS reranker/train.py --config configs/reranker_emoji32.yaml $RERANKER_FLAGS \
  --resume_from_checkpoint latest
took "re-ranker"

echo "== held-out pairs: style accuracy, retrieval, bits per image, diversity, the re-ranker's pick; the grid"
"$PYTHON" -m stage2_transformer.evaluate --config "configs/$PRIOR.yaml" --run "$OUT/$PRIOR" \
  --heldout_style true --heldout_negative_style true --num_samples "${SAMPLES:-512}" \
  --rerank_clip "$OUT/reranker_emoji32/clip"
took "scoring"

echo "== done in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
echo "held-out samples (the re-ranker's picks) beside their true images: $OUT/$PRIOR/heldout_samples.png"
