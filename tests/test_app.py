"""The Gradio app, launched for real on localhost with a tiny model and driven through gradio_client."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle.errors import run_main
from pipeline import MiniDallePipeline
from tests.tiny_models import build_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on white"
# prompt, number of images, temperature, top-k, top-p, guidance scale, seed, randomise seed, negative prompt
SETTINGS = (PROMPT, 3, 1.0, 32, 1.0, 3.0, 5, False, "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(model_dir: Path, workdir: Path, *extra: str, timeout: float = 120.0):
    """Launch ``python app_gradio.py --model model_dir`` on a free localhost port; yield its URL."""
    port = free_port()
    log = open(workdir / "app.log", "w")  # noqa: SIM115  (a file, not a pipe: a full pipe would block the server)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio_cache"),
    }
    command = [
        sys.executable,
        str(ROOT / "app_gradio.py"),
        "--model",
        str(model_dir),
        "--port",
        str(port),
        *extra,
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the app exited with {proc.returncode}:\n{(workdir / 'app.log').read_text()[-4000:]}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the app did not answer in {timeout}s:\n{(workdir / 'app.log').read_text()[-4000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_app"))


@pytest.fixture(scope="module")
def app_url(model_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("app")
    with running_app(model_dir, workdir, "--concurrency-limit", "2", "--max-images", "8") as url:
        yield url
    log = (workdir / "app.log").read_text()
    # Bad requests are refused with a message, never by an exception escaping our handler (gradio's own
    # slider-bounds checks log a traceback of gradio code; those are fine).
    assert f'File "{ROOT / "app_gradio.py"}"' not in log and "Generation failed" not in log, log[-4000:]
    assert "127.0.0.1" in log and "gradio.live" not in log  # local only, no public share link


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def _downsample(path: str, factor: int = 8) -> np.ndarray:
    """The app shows 32 px images blown up 8x by whole pixels: every 8th pixel is the original."""
    return np.asarray(Image.open(path).convert("RGB"))[::factor, ::factor]


def test_generate_returns_the_requested_lossless_images(client, model_dir):
    gallery, seed_used, status = client.predict(*SETTINGS, api_name="/generate")
    assert len(gallery) == 3 and seed_used == 5 and status.startswith("Done: 3 images")
    for item in gallery:
        assert Image.open(item["image"]).format == "PNG" and Image.open(item["image"]).size == (256, 256)
    torch.set_num_threads(1)
    expected = MiniDallePipeline.from_pretrained(model_dir, device="cpu")(
        PROMPT, num_images_per_prompt=3, seed=5
    )
    for item, image, bits, bits_empty in zip(
        gallery, expected.images, expected.bits_with_caption, expected.bits_without_caption
    ):
        assert np.array_equal(_downsample(item["image"]), np.asarray(image))
        assert item["caption"] == f"bits {bits:.0f} / {bits_empty:.0f}"
    # with "randomise", the app picks a seed and shows it back
    _, drawn, _ = client.predict(PROMPT, 1, 1.0, 32, 1.0, 3.0, 5, True, "", api_name="/generate")
    assert isinstance(drawn, (int, float)) and drawn == int(drawn) and 0 <= drawn < 2**31


def test_images_arrive_row_by_row(client):
    job = client.submit(PROMPT, 2, 1.0, 32, 1.0, 3.0, 1, False, "", api_name="/generate")
    updates = list(job)  # every yielded gallery, in order
    assert len(updates) >= 8 + 1  # one per sampled row, then the final images
    assert updates[0][2].startswith("Sampling: row 1 of 8") and updates[-1][2].startswith("Done: 2 images")
    first = _downsample(updates[0][0][0]["image"])  # after row 0: rows 1..7 of the 8x8 codes are grey
    assert (first[4:] == 128).all() and not (first[:4] == 128).all()
    assert not (_downsample(updates[-1][0][0]["image"])[4:] == 128).all()


def test_invalid_requests_show_an_error_and_the_app_keeps_serving(client):
    from gradio_client.exceptions import AppError

    bad = [
        (("   ",) + SETTINGS[1:], "Enter a prompt"),
        (("x" * 301,) + SETTINGS[1:], "limit is 300"),
        ((PROMPT, 9) + SETTINGS[2:], "9"),  # more images than --max-images 8
        ((PROMPT, 2, -1.0) + SETTINGS[3:], "-1"),  # temperature < 0 (0 is greedy)
        (SETTINGS[:6] + (-3, False, ""), "-3"),  # negative seed
        (SETTINGS[:5] + (1.0, 5, False, "a green heart"), "guidance_scale != 1"),  # negative needs guidance
    ]
    for args, match in bad:
        with pytest.raises(AppError, match=match):
            client.predict(*args, api_name="/generate")
    gallery, _, _ = client.predict(*SETTINGS, api_name="/generate")
    assert len(gallery) == 3


def test_oversized_uploads_and_requests_are_refused_and_the_app_keeps_serving(app_url, client):
    import http.client
    import json
    from urllib.parse import urlparse

    import app_gradio

    url = urlparse(app_url)
    limit = app_gradio.MAX_REQUEST_BYTES

    def post(path: str, body, headers: dict) -> tuple[int, str]:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
        try:
            if body is None:  # headers only: the declared size alone must be refused
                connection.putrequest("POST", path)
                for name, value in headers.items():
                    connection.putheader(name, value)
                connection.endheaders()
            else:
                connection.request("POST", path, body=body, headers=headers, encode_chunked=True)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    boundary = "limit-test"
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def upload(size: int) -> bytes:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
        return head.encode() + b"x" * size + f"\r\n--{boundary}--\r\n".encode()

    # one file over gradio's max_file_size, in a request under the cap: gradio refuses the file
    status, text = post("/gradio_api/upload", [upload(limit // 2 + 1024)], form)
    assert status == 413 and "maximum allowed size" in text, text
    # a declared body over the cap: refused before a byte of it is read
    status, text = post("/gradio_api/queue/join", None, {"Content-Length": str(50 * 2**20)})
    assert status == 413 and json.loads(text)["detail"].endswith(f"at most {limit} bytes per request."), text
    # a body streamed without a length (chunked): counted as it arrives
    chunk = b"x" * 2**16
    status, text = post("/gradio_api/upload", [chunk] * (limit // len(chunk) + 1), form)
    assert status == 413 and f"at most {limit} bytes" in text, text
    gallery, _, _ = client.predict(*SETTINGS, api_name="/generate")
    assert len(gallery) == 3


def test_edit_and_variations_tabs(client, model_dir, tmp_path):
    from gradio_client import handle_file

    pipe = MiniDallePipeline.from_pretrained(model_dir, device="cpu")
    picture = pipe("a blue star on black", seed=2).images[0]
    path = tmp_path / "in.png"
    picture.convert("L").resize((64, 64)).save(path)  # another mode and size: converted, not refused
    job = client.submit(handle_file(str(path)), PROMPT, 0, 32, 64, 64, "", 4, False, api_name="/edit")
    updates = list(job)
    assert [u[2].split(",")[0] for u in updates[:-1]] == [f"Sampling: row {r} of 8" for r in range(5, 9)]
    gallery, seed_used, status = updates[-1]
    assert (
        status.startswith("Done: 1 images") and seed_used == 4 and gallery[0]["caption"].startswith("bits ")
    )
    expected = pipe.edit(Image.open(path), PROMPT, box=(0, 32, 64, 64), seed=4).images[0]
    assert np.array_equal(_downsample(gallery[0]["image"]), np.asarray(expected))
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="outside the 64x64 image"):
        client.predict(handle_file(str(path)), PROMPT, 0, 0, 99, 8, "", 4, False, api_name="/edit")
    gallery, _, status = client.predict(handle_file(str(path)), 3, 0.25, "", 7, False, api_name="/variations")
    expected = pipe.variations(Image.open(path), 3, strength=0.25, seed=7).images
    assert status.startswith("Done: 3 images")
    assert [_downsample(item["image"]).tobytes() for item in gallery] == [
        np.asarray(im).tobytes() for im in expected
    ]


def test_eight_concurrent_requests_all_complete(client):
    jobs = [
        client.submit(PROMPT, 2, 1.0, 32, 1.0, 3.0, seed, False, "", api_name="/generate")
        for seed in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: job.result(timeout=120), jobs))
    assert [len(gallery) for gallery, _, _ in results] == [2] * 8
    assert [seed for _, seed, _ in results] == list(range(8))


# ------------------------------------------------------------------------------------------------
# in-process: model resolution and launch settings


def test_without_model_it_serves_the_default_or_names_the_command(tmp_path, model_dir, capsys):
    import app_gradio

    with pytest.raises(SystemExit, match="bash scripts/demo.sh"):
        app_gradio.resolve_model(None, default=tmp_path / "pipeline_tiny")
    assert app_gradio.resolve_model(None, default=model_dir) == model_dir
    assert app_gradio.DEFAULT_MODEL == ROOT / "outputs" / "pipeline_tiny"
    assert run_main(app_gradio.main, ["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Model folder") and "does not exist" in err and "\n" not in err


def test_launch_is_local_queued_and_never_shared(model_dir, monkeypatch):
    import gradio as gr

    import app_gradio

    calls = {}
    real_queue = gr.Blocks.queue

    def queue(self, **kwargs):
        calls["queue"] = kwargs
        return real_queue(self, **kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: calls.setdefault("launch", kwargs))
    monkeypatch.setattr(gr.Blocks, "queue", queue)
    app_gradio.main(["--model", str(model_dir), "--device", "cpu"])
    assert calls["launch"]["server_name"] == "127.0.0.1" and calls["launch"]["share"] is False
    assert calls["queue"]["default_concurrency_limit"] == 2 and calls["queue"]["max_size"] == 64
    assert calls["launch"]["max_file_size"] == app_gradio.MAX_UPLOAD
    demo = app_gradio.build_app(MiniDallePipeline.from_pretrained(model_dir, device="cpu"))
    assert isinstance(demo, gr.Blocks)


def test_edit_box_view_keeps_every_click_and_the_last_typed_corner(model_dir):
    """The box view's events: a corner click is never dropped while another is pending ("multiple"), and a
    burst of typing in a corner always ends redrawn at its last value ("always_last"), whatever the order of
    gr.on's triggers; "once" would drop the second click, or leave the view a keystroke behind."""
    import app_gradio

    demo = app_gradio.build_app(MiniDallePipeline.from_pretrained(model_dir, device="cpu"))
    ids = {block.elem_id: block._id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    corners = {ids[f"edit-{name}"] for name in ("x0", "y0", "x1", "y1")}
    modes = {}
    for fn in demo.fns.values():
        for block_id, event in fn.targets:
            if block_id in corners or block_id == ids["edit-box"]:
                modes.setdefault((event, block_id == ids["edit-box"]), set()).add(fn.trigger_mode)
    assert modes == {("select", True): {"multiple"}, ("input", False): {"always_last"}}, modes
