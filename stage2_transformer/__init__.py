"""Stage 2: a decoder-only transformer over [caption tokens | BOI | image codes], learning p(codes | caption).

layout    SequenceLayout: the one vocabulary and the fixed-length sequence per (caption, image) pair
tokenizer the byte-level BPE caption tokenizer
model     build / save / load the transformer (transformers' Llama, random init)
loss      next-token loss with separate text / image weights
decoding  KVDecoder: fast one-token steps with a preallocated KV cache and fused projections
sampling  KV-cached sampling with classifier-free guidance; image-code log-likelihood
"""

from .decoding import KVDecoder
from .layout import LAYOUT_FILE, SequenceLayout
from .loss import weighted_lm_loss
from .model import TransformerConfig, build_transformer, count_parameters, load_transformer, save_transformer
from .sampling import image_token_log_likelihood, sample_image_codes
from .tokenizer import encode_captions, load_caption_tokenizer, train_caption_tokenizer

__all__ = [
    "KVDecoder",
    "LAYOUT_FILE",
    "SequenceLayout",
    "TransformerConfig",
    "build_transformer",
    "count_parameters",
    "encode_captions",
    "image_token_log_likelihood",
    "load_caption_tokenizer",
    "load_transformer",
    "sample_image_codes",
    "save_transformer",
    "train_caption_tokenizer",
    "weighted_lm_loss",
]
