"""A local web demo: type a prompt, watch the images appear row by row as the codes are sampled; edit a
region of a picture, or make variations of it (tabs Generate, Edit, Variations; app_tabs.py).

    python app_gradio.py --model outputs/pipeline_tiny [--host 127.0.0.1] [--port 7860]

Without ``--model`` it serves ``outputs/pipeline_tiny`` (what ``bash scripts/demo.sh`` trains and
assembles). It listens on 127.0.0.1 unless ``--host`` says otherwise and never opens a public share
link. Requests wait in a queue (``--max-queue``) and at most ``--concurrency-limit`` run at once;
prompt length, image count, upload and request sizes are capped; a bad request shows an error in the
page and the app keeps serving. ``build_app(pipe)`` returns the ``gr.Blocks`` without launching it (for
tests and embedding).
"""

from __future__ import annotations

import os

# No usage reporting to gradio's servers: this is a local demo and must work offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from app_pictures import PictureFiles  # noqa: E402
from app_request_limit import RequestBodyLimit  # noqa: E402
from app_tabs import GALLERY_LABEL, edit_tab, image_gallery, stream_to_gallery, variations_tab  # noqa: E402
from minidalle.arguments import check_int  # noqa: E402
from minidalle.errors import ArgumentError, OneLineParser, run_main  # noqa: E402
from minidalle.images import upscale  # noqa: E402
from pipeline import PIPELINE_CONFIG_FILE, MiniDallePipeline  # noqa: E402
from pipeline.seeds import RANDOM_SEEDS_BELOW, draw_seed  # noqa: E402

logger = logging.getLogger("app_gradio")

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "outputs" / "pipeline_tiny"
TRAIN_COMMAND = "bash scripts/demo.sh"
MAX_PROMPT_CHARS = 300
MAX_IMAGES = 16
MAX_UPLOAD = "1mb"  # per uploaded file
MAX_REQUEST_BYTES = 2 * 1024 * 1024  # per request: one upload and the form around it, or a prompt
MAX_SEED = RANDOM_SEEDS_BELOW - 1  # the seed box's limit: seeds the app draws fit in it
EXAMPLES = [
    "a small red circle at the top left",
    "a large blue square in the center",
    "a small yellow triangle at the bottom right",
    "a large green circle on the left",
    "a large purple triangle at the top",
    "a small orange square at the bottom",
]


def resolve_model(model: str | None, default: Path = DEFAULT_MODEL) -> Path:
    """The folder to serve: ``--model``, else the README's default, else exit saying what to run."""
    if model:
        return Path(model)
    if (default / PIPELINE_CONFIG_FILE).is_file():
        return default
    raise SystemExit(
        f"No --model given and no trained model at {default}.\n"
        f"Train and assemble the tiny model first with:\n\n    {TRAIN_COMMAND}\n\n"
        "or pass --model DIR (a pipeline folder made by python -m pipeline.assemble)."
    )


def build_app(
    pipe: MiniDallePipeline,
    *,
    max_images: int = MAX_IMAGES,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    display_size: int = 256,
    examples: list[str] | None = None,
) -> gr.Blocks:
    """The demo's page for ``pipe``; call ``.queue(...).launch(...)`` on the result."""
    cfg, layout = pipe.config, pipe.layout
    examples = EXAMPLES if examples is None else examples

    picture_file = PictureFiles()

    def show(images):
        # Tiny images are blown up by whole pixels (nearest): crisp in the page, still lossless PNGs.
        return [picture_file(upscale(im, display_size)) for im in images]

    def seed_of(prompt, seed, randomize, num_images=1, allow_empty=False):
        kwargs = _check_request(
            prompt, num_images, seed, randomize, max_images, max_prompt_chars, allow_empty
        )
        return kwargs["prompt"], kwargs["seed"]

    def generate(
        prompt,
        num_images,
        temperature,
        top_k,
        top_p,
        guidance_scale,
        seed,
        randomize,
        negative,
        progress=gr.Progress(),  # noqa: B008
    ):
        prompt, seed = seed_of(prompt, seed, randomize, num_images)

        def start():
            return pipe.stream(
                prompt,
                num_images_per_prompt=int(num_images),
                temperature=temperature,
                top_k=_as_int(top_k),
                top_p=top_p,
                guidance_scale=guidance_scale,
                seed=seed,
                negative_prompt=(negative or "").strip() or None,
            )

        for pictures, seed_shown, status, images in stream_to_gallery(start, seed, show, progress):
            yield pictures, seed_shown, status, images or gr.skip()

    with gr.Blocks(title="mini-DALL-E", delete_cache=(600, 1800)) as demo:
        gr.Markdown(
            "# mini-DALL-E\nA caption becomes a grid of image codes, sampled one code at a time by a "
            f"transformer and drawn by a VQ-VAE decoder ({layout.grid_h}x{layout.grid_w} codes, "
            f"{pipe.vqvae.config.resolution}x{pipe.vqvae.config.resolution} pixels). Watch the rows appear."
        )
        generated = gr.State([])  # the last Generate run's images, for the Edit and Variations tabs
        with gr.Tabs():
            with gr.Tab("Generate", id="generate-tab"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt = gr.Textbox(
                            label="Prompt",
                            placeholder=examples[0] if examples else "describe a picture",
                            max_length=max_prompt_chars,
                            lines=2,
                            elem_id="prompt",
                        )
                        num_images = gr.Slider(
                            1, max_images, value=min(4, max_images), step=1, label="Number of images"
                        )
                        with gr.Accordion("Sampling", open=False):
                            temperature = gr.Slider(
                                0.0, 2.0, value=cfg.temperature, step=0.05, label="Temperature (0 = greedy)"
                            )
                            top_k = gr.Slider(
                                1,
                                layout.codebook_size,
                                value=cfg.top_k or layout.codebook_size,
                                step=1,
                                label=f"Top-k ({layout.codebook_size} = off)",
                            )
                            top_p = gr.Slider(
                                0.05, 1.0, value=cfg.top_p or 1.0, step=0.01, label="Top-p (1 = off)"
                            )
                            guidance = gr.Slider(
                                0.0,
                                10.0,
                                value=cfg.guidance_scale,
                                step=0.25,
                                label="Guidance scale (1 = off)",
                            )
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                            randomize = gr.Checkbox(value=True, label="Randomise seed")
                        negative = gr.Textbox(
                            label="Negative prompt (optional): steer away from this caption",
                            max_length=max_prompt_chars,
                            elem_id="negative-prompt",
                        )
                        button = gr.Button("Generate", variant="primary", elem_id="generate")
                        status = gr.Markdown(
                            "The pictures appear row by row while the codes are sampled.",
                            elem_id="status",
                            min_height=64,
                            container=True,
                            padding=True,
                        )
                    with gr.Column(scale=2):
                        gallery = image_gallery(GALLERY_LABEL, "gallery")
                        seed_used = gr.Number(
                            label="Seed used", precision=0, interactive=False, elem_id="seed-used"
                        )
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[prompt], label="Example prompts")
                inputs = [prompt, num_images, temperature, top_k, top_p, guidance, seed, randomize, negative]
                # The progress bar goes on the status line, so it does not cover the gallery filling up.
                outputs = [gallery, seed_used, status, generated]
                button.click(generate, inputs, outputs, api_name="generate", show_progress_on=[status])
                prompt.submit(
                    generate, inputs, outputs, api_visibility="undocumented", show_progress_on=[status]
                )
            with gr.Tab("Edit", id="edit-tab"):
                edit_tab(pipe, generated, seed_of, show, max_prompt_chars, picture_file)
            with gr.Tab("Variations", id="variations-tab"):
                variations_tab(pipe, generated, seed_of, show, max_prompt_chars)
    return demo


def _as_int(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _check_request(
    prompt, num_images, seed, randomize, max_images: int, max_prompt_chars: int, allow_empty: bool = False
) -> dict:
    """The app's own caps (the pipeline checks the sampling settings and the seed); errors show in the page.
    ``allow_empty``: an empty prompt is allowed (caption-free variations)."""
    if not isinstance(prompt, str) or (not prompt.strip() and not allow_empty):
        raise gr.Error("Enter a prompt: describe the picture to generate.", print_exception=False)
    if len(prompt) > max_prompt_chars:
        raise gr.Error(
            f"The prompt has {len(prompt)} characters; the limit is {max_prompt_chars}.",
            print_exception=False,
        )
    try:
        num_images = check_int("Number of images", num_images, 1, max_images)
    except ValueError as err:
        raise gr.Error(str(err), print_exception=False) from None
    # Drawn here rather than by the pipeline, so the page can show it while sampling; a typed seed is
    # checked by the pipeline.
    seed = draw_seed() if randomize or seed is None else _as_int(seed)
    return {"prompt": prompt.strip(), "num_images": num_images, "seed": seed}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help=f"pipeline folder (default: {DEFAULT_MODEL.relative_to(ROOT)})")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--dtype", help="fp32, bf16 or fp16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--concurrency-limit", type=int, default=2, help="generations run at once (default 2)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting at most (default 64)")
    p.add_argument(
        "--max-images",
        type=int,
        default=MAX_IMAGES,
        help=f"images per request at most (default {MAX_IMAGES})",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = resolve_model(args.model)
    hf_logging.disable_progress_bar()  # the "Loading weights" bar is noise here
    for name in ("concurrency_limit", "max_queue", "max_images"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    pipe = MiniDallePipeline.from_pretrained(model, device=args.device, dtype=args.dtype)
    logger.info("Serving %s on %s (%s)", model, pipe.device, pipe.dtype)
    demo = build_app(pipe, max_images=args.max_images)
    demo.queue(default_concurrency_limit=args.concurrency_limit, max_size=args.max_queue)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        ssr_mode=False,
        mcp_server=False,
        show_error=False,
        footer_links=["api"],
        max_file_size=MAX_UPLOAD,  # gradio's upload route would take any size
        app_kwargs={"middleware": [Middleware(RequestBodyLimit, max_bytes=MAX_REQUEST_BYTES)]},
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
