"""Run a train script under Accelerate's FSDP2 code path on CPU processes (gloo), for tests only.

Accelerate enables FSDP only on accelerators (GPU, XPU, ...), so on a CPU-only machine this wrapper
sets the accelerator state to FSDP with the plugin described by the ``FSDP_*`` environment variables
(as ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` would) before the script runs:

    ACCELERATE_USE_CPU=1 FSDP_VERSION=2 ... torchrun --nproc_per_node 2 tests/fsdp_on_cpu.py SCRIPT ARGS
"""

from __future__ import annotations

import runpy
import sys

from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = Accelerator.__init__


def _init_as_fsdp(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* from the environment
    self.state.distributed_type = DistributedType.FSDP


Accelerator.__init__ = _init_as_fsdp
# Parts of Accelerate re-derive the state's type from the hardware; keep answering FSDP.
Accelerator.distributed_type = property(lambda self: DistributedType.FSDP)
Accelerator.is_fsdp2 = property(lambda self: True)

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
