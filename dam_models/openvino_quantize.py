"""int8 with NNCF for one exported OpenVINO graph: static quantization calibrated on synthetic photos
(`quantize_graph`), or its weights alone (`compress_weights`).

Measured on this project's CPU (bench/RESULTS.md, "Model runtimes"): BLIP's image side (the
384-px ViT and the cross-attention keys and values) in int8 with the decoder in bf16 is the
fastest captioner that meets the parity targets; the decoder is left alone (its per-token
matmuls gain little and its logits are what parity measures).

A search query is a few tokens through CLIP's text tower: its time is reading the tower's weights
(76 MB in bf16), so int8 weights (activations untouched) make it 8.9 -> 6.7 ms on one thread at a
cosine of 0.9993 or more to fp32 (bench/NOTES.md, session 11). The API's query encoder uses them
(dam_models.embedder.get_query_encoder); the pipeline's text embeddings (the tags) do not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import nncf
import numpy as np
import openvino as ov


def quantize_graph(source: Path, target: Path, graph: str, samples: Iterable[dict[str, np.ndarray]]) -> Path:
    """Copy the exported folder `source` to `target` with `graph` (an .xml in it) quantized to int8."""
    shutil.copytree(source, target)
    model = ov.Core().read_model(source / graph)
    samples = list(samples)
    quantized = nncf.quantize(
        model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples)
    )
    (target / graph).unlink()
    (target / graph).with_suffix(".bin").unlink()
    ov.save_model(quantized, target / graph, compress_to_fp16=False)
    return target


def compress_weights(source: Path, target: Path, graph: str) -> Path:
    """Copy the exported folder `source` to `target` with `graph`'s weights in int8 (symmetric, per output channel)."""
    shutil.copytree(source, target)
    model = ov.Core().read_model(source / graph)
    # Silent: this runs on the API's (or `dam search`'s) first query, whose stdout may be the answer
    # (`dam search` prints JSON); NNCF logs a table of layers and draws a progress bar on stdout.
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    finally:
        nncf_log.setLevel(level)
    (target / graph).unlink()
    (target / graph).with_suffix(".bin").unlink()
    ov.save_model(compressed, target / graph, compress_to_fp16=False)
    return target
