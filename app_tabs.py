"""The demo's Edit and Variations tabs, and what every tab shares: a pipeline stream shown in a gallery.

``stream_to_gallery`` runs one ``pipe.stream(...)`` call and yields (pictures, seed, status) as the rows
arrive, then the final pictures captioned with their bits under the prior. ``edit_tab`` and
``variations_tab`` add their tab's components to the page being built (``app_gradio.build_app``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import gradio as gr
from PIL import Image, ImageDraw

from pipeline import MiniDallePipeline, PromptTruncatedWarning

logger = logging.getLogger("app_gradio")
GALLERY_LABEL = "Images (under each: bits with the caption / without it)"


def bit_captions(output) -> list[str]:
    """Under each picture: its bits under the prior with its caption / with the empty caption."""
    return [f"bits {c:.0f} / {u:.0f}" for c, u in zip(output.bits_with_caption, output.bits_without_caption)]


def image_gallery(label: str, elem_id: str) -> gr.Gallery:
    """The read-only gallery every tab shows its pictures in."""
    return gr.Gallery(
        label=label,
        format="png",
        columns=4,
        object_fit="contain",
        height="auto",
        interactive=False,
        elem_id=elem_id,
    )


def stream_to_gallery(start: Callable, seed, show: Callable, progress):
    """Run ``start()`` (a ``pipe.stream(...)`` call) and yield (pictures, seed, status, images) per row
    and at the end; the pipeline's ValueErrors show in the page, anything else is logged."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stream = start()
        for w in caught:
            if isinstance(w.message, PromptTruncatedWarning):
                cut = w.message.cuts[0].tokens_cut
                gr.Warning(
                    f"Prompt too long for this model (it reads {w.message.text_len} tokens): "
                    f"its last {cut} tokens were cut."
                )
            else:
                logger.warning("%s", w.message)
        started = time.perf_counter()
        done: list = []  # images of the finished batches
        progress(0.0, desc="Sampling")
        for event in stream:
            if event.row == event.num_rows - 1:  # this batch is finished
                done.extend(event.images)
                shown = done
            else:
                shown = done + event.images
            desc = f"Row {event.row + 1} of {event.num_rows}"
            progress(event.progress, desc=desc)
            yield show(shown), seed, f"Sampling: {desc.lower()}, {event.progress:.0%} done...", None
        output = stream.output
        seconds = time.perf_counter() - started
        pictures = list(zip(show(output.images), bit_captions(output)))
        yield pictures, output.seed, f"Done: {len(output.images)} images in {seconds:.1f} s.", output.images
    except ValueError as err:  # invalid settings: the pipeline's message names the argument and range
        raise gr.Error(str(err), print_exception=False) from None
    except gr.Error:
        raise
    except Exception:
        logger.exception("Generation failed")
        raise gr.Error(
            "Generation failed because of an internal error; the server log has the details."
        ) from None


def _pick_generated(generated: list, number) -> object:
    """The ``number``-th (from 1) image of the last Generate run, for the Edit and Variations tabs."""
    if not generated:
        raise gr.Error("Generate images first (Generate tab), or upload one.", print_exception=False)
    if number is None or not 1 <= int(number) <= len(generated):
        raise gr.Error(f"Pick an image number from 1 to {len(generated)}.", print_exception=False)
    return generated[int(number) - 1]


def _source_image(generated: gr.State, prefix: str) -> gr.Image:
    """An image input: uploaded, or the n-th image of the last Generate run."""
    image = gr.Image(label="Image", type="pil", image_mode="RGB", elem_id=f"{prefix}-image", height=256)
    with gr.Row():
        number = gr.Number(
            value=1, precision=0, minimum=1, label="Generated image #", elem_id=f"{prefix}-pick-n"
        )
        pick = gr.Button("Use generated image", elem_id=f"{prefix}-pick")
    pick.click(_pick_generated, [generated, number], [image], api_visibility="private")
    return image


def _run_controls(label: str, prefix: str) -> tuple[gr.Number, gr.Checkbox, gr.Button]:
    with gr.Row():
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
        randomize = gr.Checkbox(value=False, label="Randomise seed")
    return seed, randomize, gr.Button(label, variant="primary", elem_id=f"{prefix}-run")


def _outputs(prefix: str) -> tuple[gr.Gallery, gr.Number, gr.Markdown]:
    status = gr.Markdown("", elem_id=f"{prefix}-status", min_height=48, container=True, padding=True)
    gallery = image_gallery("Images", f"{prefix}-gallery")
    seed_used = gr.Number(label="Seed used", precision=0, interactive=False, elem_id=f"{prefix}-seed-used")
    return gallery, seed_used, status


OUTLINE_SIDE = 256  # the box view shows small pictures enlarged by a whole factor to at least this side


def _outline_scale(image) -> int:
    """The whole factor the box view enlarges ``image`` by: browsers map clicks on an enlarged picture
    wrongly (gradio's click position assumes pictures are never shown larger than they are)."""
    return max(1, -(-OUTLINE_SIDE // min(image.size)))


def _corner_click(first, image, evt: gr.SelectData):
    """Two clicks on the box view draw the box: the first fixes one corner (a one-pixel box until the
    next click), the second the opposite one. Returns (the pending first corner or None, x0, y0, x1, y1)
    in pixels of the image."""
    if image is None:
        return None, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    scale = _outline_scale(image)
    x, y = (min(v // scale, side - 1) for v, side in zip(evt.index, image.size))
    if first is None:
        return (x, y), x, y, x + 1, y + 1
    return None, min(first[0], x), min(first[1], y), max(first[0], x) + 1, max(first[1], y) + 1


def _box_outline(image, x0, y0, x1, y1):
    """The image, enlarged, with the box drawn on it (a copy: the edit reads the image as it is)."""
    if image is None:
        return None
    scale = _outline_scale(image)
    shown = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    if None not in (x0, y0, x1, y1):
        corners = (x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1)
        ImageDraw.Draw(shown).rectangle(corners, outline=(255, 0, 255), width=max(1, scale // 4))
    return shown


def edit_tab(
    pipe: MiniDallePipeline,
    generated: gr.State,
    seed_of: Callable,
    show: Callable,
    max_chars: int,
    picture_file: Callable[[Image.Image], str],
):
    """Repaint a box of an image under a prompt; the region fills row by row."""
    size = pipe.vqvae.config.resolution

    def edit(image, prompt, x0, y0, x1, y1, negative, seed, randomize, progress=gr.Progress()):  # noqa: B008
        if image is None:
            raise gr.Error("Upload an image or use a generated one.", print_exception=False)
        prompt, seed = seed_of(prompt, seed, randomize)
        settings = {"negative_prompt": negative.strip() or None, "seed": seed}
        start = lambda: pipe.stream(prompt, image=image, box=(x0, y0, x1, y1), **settings)  # noqa: E731
        for pictures, seed_shown, status, _ in stream_to_gallery(start, seed, show, progress):
            yield pictures, seed_shown, status

    gr.Markdown(
        f"Click two opposite corners of the box on the box view, or type them in pixels (a {size}x{size} "
        f"picture has x, y in [0, {size}])."
    )
    with gr.Row():
        with gr.Column(scale=1):
            image = _source_image(generated, "edit")
            prompt = gr.Textbox(label="Prompt for the box", max_length=max_chars, elem_id="edit-prompt")
            with gr.Row():
                corners = [
                    gr.Number(value=v, label=name, elem_id=f"edit-{name}")
                    for name, v in zip(("x0", "y0", "x1", "y1"), (0, 0, size // 2, size // 2))
                ]
            negative = gr.Textbox(
                label="Negative prompt (optional)", max_length=max_chars, elem_id="edit-negative"
            )
            seed, randomize, button = _run_controls("Edit", "edit")
        with gr.Column(scale=2):
            outline = gr.Image(
                label="The box (click two corners)", interactive=False, height=256, elem_id="edit-box"
            )
            gallery, seed_used, status = _outputs("edit")
    first_corner = gr.State(None)

    def redraw_outline(*image_and_corners):
        shown = _box_outline(*image_and_corners)
        return None if shown is None else picture_file(shown)

    # no progress overlay on the box view while it is redrawn: the overlay covers the picture, and a corner
    # click that lands on it is lost
    redraw = {
        "fn": redraw_outline,
        "inputs": [image, *corners],
        "outputs": [outline],
        "show_progress": "hidden",
        "api_visibility": "private",
    }
    # Every click counts: under Gradio's default trigger mode ("once") a second corner click that comes while
    # the first click's event is still pending is dropped, and the box keeps one corner. A click sets all
    # four corners, so it redraws once after them; the corners' own trigger is the user's typing (input),
    # not any change, which would redraw once per corner set
    outline.select(
        _corner_click,
        [first_corner, image],
        [first_corner, *corners],
        api_visibility="private",
        trigger_mode="multiple",
    ).then(**redraw)
    # Keystrokes typed while a redraw is pending are not all redrawn, but the last one is ("always_last"):
    # the view ends on the typed box. gr.on takes its mode from its first trigger when none is given, so it
    # is named here rather than left to the order of the list ("once" would keep the view a keystroke behind)
    gr.on([image.change, *(corner.input for corner in corners)], trigger_mode="always_last", **redraw)
    inputs = [image, prompt, *corners, negative, seed, randomize]
    button.click(edit, inputs, [gallery, seed_used, status], api_name="edit", show_progress_on=[status])


def variations_tab(
    pipe: MiniDallePipeline, generated: gr.State, seed_of: Callable, show: Callable, max_chars: int
):
    """New images that keep most of an input image's codes."""

    def vary(image, num_images, strength, prompt, seed, randomize, progress=gr.Progress()):  # noqa: B008
        if image is None:
            raise gr.Error("Upload an image or use a generated one.", print_exception=False)
        prompt, seed = seed_of(prompt or "", seed, randomize, num_images, allow_empty=True)
        start = lambda: pipe.stream(  # noqa: E731
            prompt, image=image, strength=strength, num_images_per_prompt=num_images, seed=seed
        )
        for pictures, seed_shown, status, _ in stream_to_gallery(start, seed, show, progress):
            yield pictures, seed_shown, status

    gr.Markdown(
        "Each variation resamples a random share of the image's codes (the strength), under the prompt or none."
    )
    with gr.Row():
        with gr.Column(scale=1):
            image = _source_image(generated, "vary")
            num_images = gr.Slider(1, 8, value=4, step=1, label="Number of variations")
            strength = gr.Slider(0.05, 1.0, value=0.3, step=0.05, label="Strength (share of codes resampled)")
            prompt = gr.Textbox(label="Prompt (optional)", max_length=max_chars, elem_id="vary-prompt")
            seed, randomize, button = _run_controls("Make variations", "vary")
        with gr.Column(scale=2):
            gallery, seed_used, status = _outputs("vary")
    inputs = [image, num_images, strength, prompt, seed, randomize]
    button.click(vary, inputs, [gallery, seed_used, status], api_name="variations", show_progress_on=[status])
