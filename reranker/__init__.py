"""The CLIP re-ranker: a transformers ``CLIPModel`` trained from scratch on your own captioned pictures.

run_config  the run's settings: data, the towers' size, the batches, training
tokenizer   byte-level BPE over the captions, each caption closed by an end token
model       build the CLIP; save the folder ``pipeline.rerank.ClipReranker`` loads
folder      check_clip_folder: what that folder must hold, checked without importing transformers
batches     which rows share a contrastive batch (whole groups, resumable)
evaluation  held-out retrieval, caption to picture
train       the train script (accelerate launch reranker/train.py --config configs/reranker_tiny.yaml)
"""
