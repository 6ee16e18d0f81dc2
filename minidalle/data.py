"""Image-caption data shared by both stages.

Three sources, all through Hugging Face ``datasets`` and none needing the network when the data is local:

* ``builtin``: the synthetic coloured-shapes dataset (``minidalle.shapes``), generated locally;
* ``imagefolder``: a folder of images with ``metadata.jsonl`` (``file_name``, ``text``);
* ``hf``: anything ``datasets.load_dataset`` accepts (a hub name, a local folder of parquet or
  webdataset shards), with configurable image/caption columns and split.

Images of any mode and size become RGB tensors in [-1, 1] at the configured resolution (resize the
short side, center crop). Images that cannot be decoded are skipped by the collate function, counted,
and reported once with their paths; training goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from minidalle.errors import DataError
from minidalle.image_folder import check_metadata
from minidalle.pixels import preprocess

logger = logging.getLogger(__name__)

MAX_WORKERS = 256  # DataLoader worker processes; more is a typo that would start thousands of processes
MAX_BUILTIN_SIZE = 1_000_000  # built-in images per split; more would take hours to draw and fill the disk


@dataclass
class DataConfig:
    source: str = "builtin"  # "builtin", "imagefolder" or "hf"
    path: str | None = None  # imagefolder: the folder; hf: a dataset name or folder of shards
    hf_name: str | None = None  # hf: the dataset's configuration name, if it has several
    data_files: str | None = None  # hf: e.g. "shards/*.parquet" with path "parquet"
    train_split: str = "train"
    eval_split: str = "validation"
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 32
    # built-in data only
    builtin_train_size: int = 20000
    builtin_eval_size: int = 512
    builtin_cache_dir: str = "data/builtin_shapes"
    seed: int = 0
    # loading
    num_workers: int = 0
    # hf only: read the train split as a stream (datasets.IterableDataset) from parquet or webdataset
    # shards, never holding it in memory; each process reads its own part (split_dataset_by_node).
    streaming: bool = False
    shuffle_buffer: int = 1000  # streaming: examples in the shuffle buffer (0: the shards' order)

    def __post_init__(self) -> None:
        if self.source not in ("builtin", "imagefolder", "hf"):
            raise ValueError(f"data.source must be 'builtin', 'imagefolder' or 'hf', got {self.source!r}.")
        if self.source in ("imagefolder", "hf") and not self.path:
            raise ValueError(f"data.source={self.source!r} needs data.path (a folder or dataset name).")
        if self.resolution < 8 or self.resolution % 8 != 0:
            raise ValueError(f"data.resolution must be a multiple of 8 and >= 8, got {self.resolution}.")
        if not 0 <= self.num_workers <= MAX_WORKERS:
            raise ValueError(f"data.num_workers must lie in [0, {MAX_WORKERS}], got {self.num_workers}.")
        if not all(
            1 <= size <= MAX_BUILTIN_SIZE for size in (self.builtin_train_size, self.builtin_eval_size)
        ):
            raise ValueError(
                f"data.builtin_train_size and data.builtin_eval_size must lie in [1, {MAX_BUILTIN_SIZE}], got "
                f"{self.builtin_train_size} and {self.builtin_eval_size}."
            )
        if self.streaming and self.source != "hf":
            raise ValueError(
                "data.streaming needs data.source: hf (e.g. data.path: parquet with data.data_files: "
                f"'shards/*.parquet', or webdataset with '*.tar'), got source {self.source!r}."
            )
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}.")


class NoUsableDataError(DataError):
    pass


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def load_captioned_dataset(cfg: DataConfig, split: str):
    """Return a ``datasets.Dataset`` with columns ``image`` (undecoded: bytes/path) and ``text``."""
    import datasets

    if cfg.source == "builtin":
        from minidalle.shapes import build_builtin_dataset

        dsd = build_builtin_dataset(
            cfg.builtin_cache_dir,
            train_size=cfg.builtin_train_size,
            eval_size=cfg.builtin_eval_size,
            resolution=cfg.resolution,
            seed=cfg.seed,
        )
        if split not in dsd:
            raise NoUsableDataError(f"The built-in dataset has splits {list(dsd)}, not {split!r}.")
        ds = dsd[split]
        image_column, caption_column = "image", "text"
    else:
        if cfg.source == "imagefolder":
            folder = Path(cfg.path)
            if not folder.is_dir():
                raise NoUsableDataError(
                    f"data.path {cfg.path!r} is not a folder. Point it at a folder of images with a "
                    "metadata.jsonl holding 'file_name' and 'text' for each image."
                )
            if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
                raise NoUsableDataError(
                    f"data.path {cfg.path!r} holds no images: there is nothing to train on."
                )
            metadata = folder / "metadata.jsonl"
            if metadata.is_file() and metadata.stat().st_size == 0:
                raise NoUsableDataError(
                    f"{metadata} is empty: it needs one line per image with 'file_name' and 'text'."
                )
            check_metadata(folder, cfg.caption_column)
            ds_all = datasets.load_dataset("imagefolder", data_dir=str(folder))
        else:
            kwargs: dict[str, Any] = {}
            if cfg.data_files:
                kwargs["data_files"] = cfg.data_files
            ds_all = datasets.load_dataset(cfg.path, cfg.hf_name, **kwargs)
        if split not in ds_all:
            raise NoUsableDataError(
                f"Split {split!r} not found in {cfg.path!r}; it has {list(ds_all)}. "
                "Set data.train_split / data.eval_split to one of these."
            )
        ds = ds_all[split]
        image_column, caption_column = cfg.image_column, cfg.caption_column
    ds = standard_columns(ds, image_column, caption_column, split)
    if len(ds) == 0:
        raise NoUsableDataError(f"Split {split!r} of {cfg.source} data {cfg.path or ''} is empty.")
    return ds


def standard_columns(ds, image_column: str, caption_column: str, split: str):
    """Check the configured columns exist and name them ``image`` (undecoded) and ``text``."""
    import datasets

    columns = ds.column_names  # None for a stream whose features are unknown before reading
    for column, key in ((image_column, "image_column"), (caption_column, "caption_column")):
        if columns is not None and column not in columns:
            raise NoUsableDataError(
                f"Column {column!r} not found in split {split!r} (columns: {columns}). "
                f"Set data.{key} to the right column."
            )
    if ds.features is not None:
        check_caption_type(ds.features[caption_column], caption_column, split)
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if caption_column != "text":
        ds = ds.rename_column(caption_column, "text")
    return ds


TEXT_DTYPES = ("string", "large_string", "null")  # "null": a column with no caption at all


def check_caption_type(feature, caption_column: str, split: str) -> None:
    """Captions must be strings (a missing one is allowed), as in an image folder's metadata.jsonl: a
    column of numbers, lists or mixed values (datasets' ``Json``) is refused, not turned into text."""
    import datasets

    if isinstance(feature, datasets.Value) and feature.dtype in TEXT_DTYPES:
        return
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__  # Json: mixed
    raise NoUsableDataError(
        f"Column {caption_column!r} of split {split!r} holds {kind} values, not strings: captions must be "
        "text, one per row. Set data.caption_column to the caption column, or store the captions as strings."
    )


def image_identifier(value: Any, index: int) -> str:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {index}"


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Map-style dataset of (pixels, caption). Unreadable images come back as ``pixels=None``."""

    def __init__(self, hf_dataset, resolution: int):
        self.data = hf_dataset
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.data[int(index)]
        try:
            pixels = preprocess(row["image"], self.resolution)
            bad = None
        except Exception as err:  # noqa: BLE001 - any decoding failure means "skip this image"
            pixels, bad = None, f"{image_identifier(row['image'], index)} ({type(err).__name__}: {err})"
        return {"pixels": pixels, "text": row["text"] or "", "bad": bad}


class SkippedImages:
    """Counts unreadable images and reports each path once, so a bad file never stops training."""

    def __init__(self) -> None:
        self.count = 0
        self.reported: set[str] = set()

    def record(self, description: str) -> None:
        self.count += 1
        if description not in self.reported:
            self.reported.add(description)
            logger.warning("Skipping unreadable image %s", description)


SKIPPED = SkippedImages()


def collate_image_captions(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable images of a batch; the unreadable ones are dropped and counted in ``SKIPPED``."""
    good = [item for item in batch if item["pixels"] is not None]
    for item in batch:
        if item["pixels"] is None:
            SKIPPED.record(item["bad"])
    pixels = torch.stack([item["pixels"] for item in good]) if good else torch.zeros(0, 3, 1, 1)
    return {"pixels": pixels, "text": [item["text"] for item in good]}  # pixels: (B, 3, H, W)


def check_usable(dataset: ImageCaptionDataset, max_probe: int = 256) -> int:
    """Fail at start, clearly, if the dataset has no image that decodes. Returns the number probed."""
    probe = min(len(dataset), max_probe)
    problems = []
    for index in range(probe):
        item = dataset[index]
        if item["pixels"] is not None:
            return index + 1
        problems.append(item["bad"])
    raise NoUsableDataError(
        f"None of the first {probe} images could be read, so there is nothing to train on. "
        f"First problems: {problems[:5]}. Check data.path and data.image_column."
    )


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffled order that depends only on (seed, epoch): resuming at any step sees the same data.

    Accelerate shards the batches of this sampler across processes, so no two ranks see the same
    example in an epoch.
    """

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())


def load_train_eval(cfg: DataConfig, max_eval: int = 512):
    """(train, eval) ``datasets.Dataset``s. Without an eval split, a fixed slice of train is held out."""
    train = load_captioned_dataset(cfg, cfg.train_split)
    try:
        evaluation = load_captioned_dataset(cfg, cfg.eval_split)
    except NoUsableDataError as err:
        if len(train) < 20:
            raise NoUsableDataError(
                f"{err} There are too few training images ({len(train)}) to hold some out for evaluation."
            ) from None
        held_out = min(max_eval, max(1, len(train) // 100))
        logger.warning("%s Holding out %d training images for evaluation instead.", err, held_out)
        split = train.train_test_split(test_size=held_out, seed=cfg.seed, shuffle=True)
        train, evaluation = split["train"], split["test"]
    return train, evaluation


def infinite_batches(accelerator, dataloader, sampler: EpochSampler, start_micro_step: int):
    """Yield (epoch, batch) forever, starting ``start_micro_step`` micro-batches into the run.

    The data order depends only on (seed, epoch), so a resumed run sees exactly the batches an
    uninterrupted run would have seen; skipped batches are not loaded.
    """
    per_epoch = len(dataloader)
    if per_epoch == 0:
        raise DataError(
            "The dataloader is empty: the dataset has fewer examples than one batch. "
            "Lower train.batch_size or add data."
        )
    epoch, skip = divmod(start_micro_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for batch in loader:
            yield epoch, batch
        epoch, skip = epoch + 1, 0
