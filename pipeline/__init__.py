"""The text-to-image pipeline: both stages and the caption tokenizer behind one call.

pipeline  MiniDallePipeline (from_pretrained / save_pretrained / __call__ / stream / complete)
assemble  build a pipeline folder from the stage-1 and stage-2 training runs
rerank    ClipReranker: keep the candidates a local CLIP model matches best
generate  the command line: python -m pipeline.generate --model DIR --prompt "..." -n 8 --out grid.png
"""

from .pipeline import (
    PIPELINE_CONFIG_FILE,
    GenerationCancelled,
    GenerationStream,
    IncompatiblePartsError,
    MiniDallePipeline,
    PipelineConfig,
    PipelineOutput,
    RowEvent,
)

__all__ = [
    "PIPELINE_CONFIG_FILE",
    "GenerationCancelled",
    "GenerationStream",
    "IncompatiblePartsError",
    "MiniDallePipeline",
    "PipelineConfig",
    "PipelineOutput",
    "RowEvent",
    "assemble_pipeline",
]


def __getattr__(name):
    # assemble imports the pipeline; importing it lazily keeps `import pipeline` light and acyclic.
    if name == "assemble_pipeline":
        from .assemble import assemble_pipeline

        return assemble_pipeline
    raise AttributeError(name)
