"""The pictures the page shows, handed to Gradio as files that are written once each.

Why not hand Gradio the PIL images: Gradio encodes a returned image into a file named by its content and
rewrites that file every time the same picture is returned again. This page returns the same pictures
again and again: every streamed row re-sends the finished ones, and each corner click on the box view
redraws it four times (one redraw per corner). A browser fetching a picture while it is being rewritten
gets a short read (the server logs h11's "Too little data for declared Content-Length") and keeps a broken
picture: a blank gallery tile, or a box view on which the next click does nothing. A file path, by
contrast, is copied into Gradio's cache only when it is not there yet.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

MAX_AGE_S = 1800  # as the app's Gradio cache (delete_cache): a picture is not fetched after half an hour


class PictureFiles:
    """PNG files named by their content in a private temporary folder, removed at exit."""

    def __init__(self, max_age_s: float = MAX_AGE_S):
        # under the system's temporary folder, from which Gradio accepts files
        self.folder = Path(tempfile.mkdtemp(prefix="minidalle-app-"))
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)
        self.max_age_s = max_age_s
        self._last_prune = time.monotonic()

    def __call__(self, image: Image.Image) -> str:
        """The path of ``image`` as a PNG; the same picture always gets the same, complete file."""
        data = io.BytesIO()
        image.save(data, format="PNG")
        raw = data.getvalue()
        path = self.folder / f"{hashlib.sha256(raw).hexdigest()[:32]}.png"
        try:
            os.utime(path)  # handed out again: kept as long as a new picture
        except FileNotFoundError:
            # written beside, then renamed: a reader never sees a partial file
            partial = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_bytes(raw)
            os.replace(partial, path)
        self._prune()
        return str(path)

    def _prune(self) -> None:
        """At most once a minute, delete the pictures older than ``max_age_s``."""
        now = time.monotonic()
        if now - self._last_prune < 60:
            return
        self._last_prune = now
        cutoff = time.time() - self.max_age_s
        for old in self.folder.glob("*.png"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except FileNotFoundError:  # pruned by a concurrent call
                pass
