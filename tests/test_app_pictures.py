"""The app's picture files: one complete file per picture, never rewritten while the page may fetch it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from app_pictures import PictureFiles


def test_the_same_picture_reuses_its_file_without_rewriting_it():
    files = PictureFiles()
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    first = Path(files(red))
    with Image.open(first) as shown:
        assert shown.format == "PNG" and shown.getpixel((3, 3)) == (255, 0, 0)
    written = first.read_bytes()
    first.write_bytes(written + b"marker")  # a rewrite would drop the marker
    again = Path(files(red.copy()))
    assert again == first
    assert again.read_bytes() == written + b"marker"  # handed out again, not written again
    blue = Path(files(Image.new("RGB", (8, 8), (0, 0, 255))))
    assert blue != first
    assert {p.name for p in files.folder.iterdir()} == {first.name, blue.name}  # no partial files left


def test_pictures_older_than_the_cache_age_are_pruned():
    files = PictureFiles(max_age_s=60)
    old = Path(files(Image.new("RGB", (4, 4), (0, 255, 0))))
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    files._last_prune -= 61  # the once-a-minute prune is due
    kept = Path(files(Image.new("RGB", (4, 4), (9, 9, 9))))
    assert not old.exists() and kept.exists()
