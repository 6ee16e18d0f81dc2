"""Streamed training data (``data.streaming: true``): shards read as they are needed, never held in memory.

Each process reads its own part of the train split; the evaluation examples are few and held in memory.
A position (epoch, batches read in it) is all a run needs to resume the stream exactly.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

from minidalle.data import DataConfig, NoUsableDataError, image_identifier, standard_columns
from minidalle.pixels import preprocess

logger = logging.getLogger(__name__)


def load_streaming_split(cfg: DataConfig, split: str):
    """A ``datasets.IterableDataset`` over one split of ``hf`` data, columns ``image`` (undecoded), ``text``."""
    import datasets

    kwargs: dict[str, Any] = {"data_files": cfg.data_files} if cfg.data_files else {}
    try:
        stream = datasets.load_dataset(cfg.path, cfg.hf_name, split=split, streaming=True, **kwargs)
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise NoUsableDataError(
            f"No data found for data.path={cfg.path!r} data.data_files={cfg.data_files!r}: {err}"
        ) from None
    except ValueError as err:
        if "split" not in str(err).lower():
            raise
        raise NoUsableDataError(f"Split {split!r} not found in {cfg.path!r}: {err}") from None
    stream = standard_columns(stream, cfg.image_column, cfg.caption_column, split)
    stream = stream.select_columns(["image", "text"])
    if next(iter(stream.take(1)), None) is None:
        raise NoUsableDataError(f"Split {split!r} of {cfg.path} {cfg.data_files or ''} is empty.")
    return stream


def load_streaming_train_eval(cfg: DataConfig, max_eval: int = 512):
    """(train stream, eval rows): the evaluation examples are few, so they are held in memory.

    Without an eval split, the first ``min(max_eval, 64)`` examples of the train stream are held out
    (and skipped by training).
    """
    train = load_streaming_split(cfg, cfg.train_split)
    try:
        evaluation = list(load_streaming_split(cfg, cfg.eval_split).take(max_eval))
    except NoUsableDataError as err:
        held_out = min(max_eval, 64)
        logger.warning("%s Holding out the first %d training examples for evaluation instead.", err, held_out)
        evaluation = list(train.take(held_out))
        train = train.skip(held_out)
    return train, evaluation


class StreamingImageCaptions(torch.utils.data.IterableDataset):
    """This process's part of a streamed split as (pixels, caption) items, reshuffled every epoch.

    ``split_dataset_by_node`` gives each process whole shards when their number is a multiple of the
    number of processes, else every world_size-th example: either way no two processes see the same
    example in an epoch. The order depends only on (seed, epoch, rank, world size), so a run resumes
    exactly with ``set_position(epoch, skip)``: the first ``skip`` rows of the epoch are read but not
    decoded. (With DataLoader workers, skip whole batches of the loader instead: see ``stream_batches``.)
    """

    def __init__(self, stream, resolution: int, seed: int, buffer_size: int, rank: int, world_size: int):
        from datasets.distributed import split_dataset_by_node

        self.stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        if buffer_size > 0:
            # Shards in a new order every epoch, examples through a buffer fed by one shard at a time
            # (datasets 5's default interleaves 10 shards into it, which here costs seconds per epoch).
            self.stream = self.stream.shuffle(seed=seed, buffer_size=buffer_size, max_buffer_input_shards=1)
        self.resolution = resolution
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        self.stream.set_epoch(self.epoch)
        for index, row in enumerate(self.stream):
            if index < self.skip:
                continue
            try:
                pixels, bad = preprocess(row["image"], self.resolution), None
            except Exception as err:  # noqa: BLE001 - any decoding failure means "skip this image"
                pixels, bad = None, f"{image_identifier(row['image'], index)} ({type(err).__name__}: {err})"
            yield {"pixels": pixels, "text": row["text"] or "", "bad": bad}


def stream_batches(loader, dataset: StreamingImageCaptions, epoch: int, batches_done: int, device):
    """Yield ((epoch, batches done in it), batch) forever from a streaming loader, starting at a position.

    Each process counts its own position; epochs may end at different steps on different processes
    (their parts of the data need not be equal), which is harmless because every process takes the same
    number of batches per optimizer step.
    """
    workers = loader.num_workers > 0
    while True:
        dataset.set_position(epoch, 0 if workers else batches_done * loader.batch_size)
        batches = iter(loader)
        if workers and batches_done:  # rows cannot be skipped per worker: load and drop whole batches
            batches = itertools.islice(batches, batches_done, None)
        produced = False
        for batch in batches:
            produced = True
            batches_done += 1
            batch["pixels"] = batch["pixels"].to(device)
            yield (epoch, batches_done), batch
        if not produced and batches_done == 0:
            raise NoUsableDataError("This process's part of the streamed data holds less than one batch.")
        epoch, batches_done = epoch + 1, 0
