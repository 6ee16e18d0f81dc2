"""Pre-encoding: every image becomes its stage-1 codes once, stored on disk with its caption's token ids.

Training then reads two compact integer columns (``codes``: h*w uint16, ``text_ids``: text_len int32)
and never touches pixels or the stage-1 model again. The stored result records the fingerprint of the
stage-1 model that made it (config + weights), of the text tokenizer and of the source data, and is
reused by a later run that asks for the same thing.

Multi-process: each rank encodes one contiguous shard and saves it atomically; the main process
merges the shards. An interrupted run, rerun, redoes only the shards that are missing, so the result
has no duplicated and no missing rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minidalle import data as data_lib
from minidalle.errors import ModelFolderError
from minidalle.faults import fault_point
from minidalle.hub import file_fingerprint, fingerprint_matches, model_fingerprint
from minidalle.pixels import preprocess
from stage2_transformer.tokenizer import encode_captions

logger = logging.getLogger(__name__)

META_FILE = "codes_meta.json"


class CodesMismatchError(ModelFolderError):
    pass


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    return file_fingerprint(Path(tokenizer_dir) / "tokenizer.json")


def check_codes_meta(
    meta: dict, vqvae_dir: str | Path, vqvae_fp: str, codebook_size: int, where: str
) -> None:
    """Stop with a clear message if stored codes were made by another stage-1 model."""
    if meta.get("codebook_size") != codebook_size:
        raise CodesMismatchError(
            f"The codes in {where} use a codebook of {meta.get('codebook_size')} entries, but the stage-1 "
            f"model has {codebook_size}. Re-encode with this model (drop codes.path) or use the model that made them."
        )
    if not fingerprint_matches(vqvae_dir, meta.get("vqvae_fingerprint"), vqvae_fp):
        raise CodesMismatchError(
            f"The codes in {where} were made by another stage-1 model (fingerprint "
            f"{meta.get('vqvae_fingerprint')}, this one is {vqvae_fp}, made from {meta.get('vqvae_path')!r}). "
            "Training on them would teach the transformer the wrong tokens: point `vqvae` at the model that "
            "made them, or drop codes.path to re-encode."
        )


# (dx, dy) of each view of a picture with codes.shift_pixels: as it is, then moved right, left, down, up
SHIFT_DIRECTIONS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def shifted_views(pixels: torch.Tensor, shift: int) -> torch.Tensor:
    """(B, C, H, W) -> (5, B, C, H, W): the images, then each moved ``shift`` pixels right, left, down and
    up, the edge pixels repeated into the space left behind (not wrapped round: a shape cut by one border
    must not reappear at the other)."""
    height, width = pixels.shape[-2:]
    padded = F.pad(pixels, (shift, shift, shift, shift), mode="replicate")  # (B, C, H + 2s, W + 2s)
    tops_lefts = [(shift - dy * shift, shift - dx * shift) for dx, dy in SHIFT_DIRECTIONS]
    return torch.stack([padded[..., top : top + height, left : left + width] for top, left in tops_lefts])


def _encode_shard(
    hf_shard,
    vqvae,
    tokenizer,
    text_len: int,
    resolution: int,
    batch_size: int,
    accelerator,
    shift_pixels: int = 0,
):
    """datasets.map over one shard: images -> codes, captions -> ids. Unreadable images are dropped.
    With ``shift_pixels``, five rows per image (``shifted_views``), all with the image's caption.
    The encoder runs under the run's autocast (the quantizer's argmin stays fp32 whatever it is)."""

    def encode_batch(batch):
        pixels, captions = [], []
        for value, caption in zip(batch["image"], batch["text"]):
            try:
                pixels.append(preprocess(value, resolution))
                captions.append(caption or "")
            except Exception as err:  # noqa: BLE001 - skip and report, never stop
                data_lib.SKIPPED.record(
                    f"{data_lib.image_identifier(value, -1)} ({type(err).__name__}: {err})"
                )
        if not pixels:
            return {"codes": [], "text_ids": [], "text": []}
        images = torch.stack(pixels)  # (B, 3, H, W)
        if shift_pixels:  # image-major, so that the rows do not depend on how the data is batched or sharded
            images = shifted_views(images, shift_pixels).transpose(0, 1).flatten(0, 1)  # (5B, 3, H, W)
            captions = [caption for caption in captions for _ in SHIFT_DIRECTIONS]
        with torch.no_grad(), accelerator.autocast():
            codes = vqvae.encode(images.to(accelerator.device))  # (B', h, w)
        codes = codes.flatten(1).cpu().numpy().astype(np.uint16)  # (B', h*w)
        text_ids = (
            encode_captions(tokenizer, captions, text_len, warn=False).numpy().astype(np.int32)
        )  # (B', T)
        return {"codes": list(codes), "text_ids": list(text_ids), "text": captions}

    return hf_shard.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        remove_columns=hf_shard.column_names,
        desc="encoding images to codes",
        load_from_cache_file=False,
    )


def precompute_codes(
    hf_dataset,
    *,
    vqvae,
    vqvae_dir: str | Path,
    tokenizer,
    tokenizer_dir: str | Path,
    text_len: int,
    cache_root: str | Path,
    split: str,
    batch_size: int,
    accelerator,
    shift_pixels: int = 0,
):
    """Encode ``hf_dataset`` (image, text) to codes, or reuse a stored result. Returns a datasets.Dataset.
    ``shift_pixels`` > 0: five rows per image, see ``shifted_views``."""
    import datasets

    vqvae_fp = model_fingerprint(vqvae_dir)
    resolution = vqvae.config.resolution
    key_parts = {
        "vqvae_fingerprint": vqvae_fp,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer_dir),
        "dataset_fingerprint": getattr(hf_dataset, "_fingerprint", None),
        "num_source_rows": len(hf_dataset),
        "text_len": text_len,
        "resolution": resolution,
    }
    # Only when set, so that codes stored before these options keep their key. A bf16 encoder gives
    # slightly different codes (96.4% agree on the demo's shapes), so they are stored apart from fp32 ones.
    if shift_pixels:
        key_parts["shift_pixels"] = shift_pixels
    if accelerator.mixed_precision != "no":
        key_parts["mixed_precision"] = accelerator.mixed_precision
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    final = Path(cache_root) / f"{split}-{key}"
    if (final / META_FILE).is_file():
        meta = json.loads((final / META_FILE).read_text())
        check_codes_meta(meta, vqvae_dir, vqvae_fp, vqvae.config.codebook_size, str(final))
        logger.info("Reusing pre-encoded %s codes from %s (%d rows)", split, final, meta["num_rows"])
        return datasets.load_from_disk(str(final / "data"))

    work = Path(cache_root) / f"{split}-{key}.partial"
    rank, world = accelerator.process_index, accelerator.num_processes
    shard_dir = work / f"shard-{rank:05d}-of-{world:05d}"
    if not (shard_dir / "done").is_file():
        shard = hf_dataset.shard(num_shards=world, index=rank, contiguous=True)
        vqvae.to(accelerator.device).eval()
        encoded = _encode_shard(
            shard, vqvae, tokenizer, text_len, resolution, batch_size, accelerator, shift_pixels
        )
        fault_point("precompute_before_save", rank)  # test hooks (MINIDALLE_FAULTS): "step" is the rank
        tmp = shard_dir.with_name(shard_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        encoded.save_to_disk(str(tmp))
        fault_point("precompute_mid_save", rank)
        (tmp / "done").write_text(json.dumps({"rows": len(encoded), "source_rows": len(shard)}))
        if shard_dir.exists():
            shutil.rmtree(shard_dir)
        os.replace(tmp, shard_dir)
    accelerator.wait_for_everyone()
    fault_point("precompute_before_merge", rank)

    if accelerator.is_main_process:
        shard_dirs = sorted(work.glob(f"shard-*-of-{world:05d}"))
        shard_dirs = [d for d in shard_dirs if (d / "done").is_file()]
        if len(shard_dirs) != world:
            raise RuntimeError(f"Pre-encoding finished {len(shard_dirs)} of {world} shards in {work}.")
        per_image = len(SHIFT_DIRECTIONS) if shift_pixels else 1  # rows stored per picture
        merged = datasets.concatenate_datasets([datasets.load_from_disk(str(d)) for d in shard_dirs])
        if len(merged) == 0:
            raise data_lib.NoUsableDataError(f"No image of the {split} split could be encoded.")
        tmp_final = final.with_name(final.name + ".tmp")
        if tmp_final.exists():
            shutil.rmtree(tmp_final)
        merged.save_to_disk(str(tmp_final / "data"))
        meta = {
            **key_parts,
            "split": split,
            "vqvae_path": str(vqvae_dir),
            "codebook_size": vqvae.config.codebook_size,
            "grid_h": vqvae.config.grid_size,
            "grid_w": vqvae.config.grid_size,
            "num_rows": len(merged),
            "skipped_images": len(hf_dataset) - len(merged) // per_image,
        }
        (tmp_final / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp_final, final)
        shutil.rmtree(work, ignore_errors=True)
        views = f" ({per_image} shifted views each)" if shift_pixels else ""
        logger.info("Pre-encoded %d %s images%s to %s", len(merged) // per_image, split, views, final)
    accelerator.wait_for_everyone()
    return datasets.load_from_disk(str(final / "data"))


def load_codes_dir(path: str | Path, vqvae_dir: str | Path, codebook_size: int):
    """Load codes given explicitly by path (a folder written by precompute_codes), checking who made them."""
    import datasets

    folder = Path(path)
    if not (folder / META_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no pre-encoded codes (no {META_FILE}).")
    meta = json.loads((folder / META_FILE).read_text())
    check_codes_meta(meta, vqvae_dir, model_fingerprint(vqvae_dir), codebook_size, str(folder))
    return datasets.load_from_disk(str(folder / "data")), meta
