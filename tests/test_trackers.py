"""train.report_to: any tracker accelerate supports; images through each tracker's own image logging."""

from __future__ import annotations

import pytest
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from PIL import Image

from minidalle.trackers import check_report_to, log_image
from minidalle.train_config import TrainConfig


def test_report_to_names_accelerates_trackers_and_what_is_missing(monkeypatch):
    check_report_to("none")
    check_report_to("tensorboard")
    with pytest.raises(
        ValueError, match=r"one of accelerate's trackers \(aim, .*tensorboard.*wandb.*\); got 'tensorbored'"
    ):
        TrainConfig(report_to="tensorbored")
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["tensorboard"])
    with pytest.raises(ValueError, match=r"'wandb': its package is not installed .*pip install wandb"):
        check_report_to("wandb")


class ImageRecordingTracker(GeneralTracker):
    """A tracker of accelerate's API that keeps what it is sent (as wandb's or aim's would upload it)."""

    name = "recording"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.images = []

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None, **kwargs):
        pass

    def log_images(self, values, step=None, **kwargs):
        self.images.append((values, step))


def test_log_image_goes_to_tensorboard_and_to_other_trackers_log_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recording = ImageRecordingTracker()
    accelerator = Accelerator(cpu=True, log_with=["tensorboard", recording], project_dir=tmp_path)
    accelerator.init_trackers("run")
    image = Image.new("RGB", (12, 8), (200, 30, 40))
    log_image(accelerator, "samples", image, 7, text=("sample_captions", "a red square"))
    accelerator.end_training()
    ((values, step),) = recording.images
    assert (
        step == 7
        and values["samples"][0].shape == (8, 12, 3)
        and tuple(values["samples"][0][0, 0]) == (200, 30, 40)
    )
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent)).Reload()
    assert [e.step for e in events.Images("samples")] == [7]
