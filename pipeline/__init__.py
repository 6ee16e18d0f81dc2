"""The text-to-image pipeline: both stages and the caption tokenizer behind one call.

pipeline  MiniDallePipeline: __call__ / stream / complete / edit / variations / score; from_pretrained / save_pretrained / push_to_hub
settings  GenerationSettings, the keywords of a call, and the checks that are the pipeline's own
seeds     one seeded generator per image
outputs   PipelineOutput, RowEvent, PromptTruncatedWarning
stream    GenerationStream: the rows of a running call as an iterator
folder    the pipeline folder on disk: PipelineConfig (pipeline_config.json) and the parts' checks
assemble  build a pipeline folder from the stage-1 and stage-2 training runs
regions   which codes completion, editing (a box) and variations (a strength) resample
sharing   the Hub: a folder from a repo id, push_to_hub, and the model card
score     the command line: python -m pipeline.score --model DIR --caption "..." a.png b.png
rerank    ClipReranker: keep the candidates a local CLIP model matches best
generate  the command line: python -m pipeline.generate --model DIR --prompt "..." -n 8 --out grid.png
"""

from .folder import PIPELINE_CONFIG_FILE, IncompatiblePartsError, PipelineConfig
from .outputs import ImageBits, PipelineOutput, PromptTruncatedWarning, RowEvent
from .pipeline import MiniDallePipeline
from .settings import GenerationSettings
from .stream import GenerationCancelled, GenerationStream

__all__ = [
    "PIPELINE_CONFIG_FILE",
    "GenerationCancelled",
    "GenerationSettings",
    "GenerationStream",
    "ImageBits",
    "IncompatiblePartsError",
    "MiniDallePipeline",
    "PipelineConfig",
    "PipelineOutput",
    "PromptTruncatedWarning",
    "RowEvent",
]
