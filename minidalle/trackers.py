"""Experiment trackers: ``train.report_to`` checked against accelerate's, and images logged through each
tracker's own image logging.

Any tracker accelerate supports works (tensorboard, wandb, mlflow, aim, comet_ml, clearml, dvclive,
swanlab, trackio); the extras are optional dependencies (``pip install wandb``, ...).
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from minidalle.images import to_chw_uint8

logger = logging.getLogger(__name__)


def check_report_to(name: str) -> None:
    """Raise a ValueError unless ``name`` is "none" or a tracker accelerate knows and finds installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    if name == "none":
        return
    known = sorted(LOGGER_TYPE_TO_CLASS)
    if name not in known:
        raise ValueError(
            f"train.report_to must be none or one of accelerate's trackers ({', '.join(known)}); got {name!r}."
        )
    installed = sorted(str(getattr(t, "value", t)) for t in get_available_trackers())
    if name not in installed:
        raise ValueError(
            f"train.report_to {name!r}: its package is not installed (installed: {', '.join(installed) or 'none'}); "
            f"pip install {name}, or use tensorboard or none."
        )


def log_image(
    accelerator, tag: str, image: Image.Image, step: int, text: tuple[str, str] | None = None
) -> None:
    """Send ``image`` to every tracker of the run: TensorBoard's writer directly (with ``text`` = (tag,
    text) beside it), others through their ``log_images``; trackers without image logging are skipped."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, to_chw_uint8(image), step)
            if text is not None:
                tracker.writer.add_text(*text, step)
        elif hasattr(tracker, "log_images"):
            tracker.log_images({tag: [np.asarray(image.convert("RGB"))]}, step=step)
        else:
            logger.debug("tracker %s has no image logging; %s not sent", tracker.name, tag)
