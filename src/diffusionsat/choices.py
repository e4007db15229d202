"""Names the command line validates before loading anything, kept in a module without heavy imports
so that ``diffusionsat --help`` and option parsing never import torch or diffusers."""

from __future__ import annotations

#: ``generate --control KIND``: maps a ControlNet steers generation with.
CONTROL_KINDS = ("road", "mask", "edges")
#: ``evaluate --task``.
EVAL_TASKS = ("generate", "superres", "temporal", "inpaint")
#: Most pixels of one conditional-task input raster (or window) read whole: 16.8 Mpx, as the server's
#: upload limit. Larger scenes are refused from their header, before any pixel is read (``--max-pixels``).
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
#: ``superres``/``inpaint --block``: side of one processing block, in output pixels. An input (window)
#: whose output is larger than one block is processed block by block (:mod:`diffusionsat.scenes`).
DEFAULT_BLOCK = 1024
BLOCK_RANGE = (32, 16384)
#: A block must span at least this many input pixels (``superres``: ``--block`` ≥ 16 × ``--scale``).
MIN_BLOCK_INPUT = 16
#: Largest output also written as a PNG (held in memory whole once); larger block-processed outputs
#: are written as GeoTIFF + sidecar only.
MAX_PNG_PIXELS = DEFAULT_MAX_INPUT_PIXELS
