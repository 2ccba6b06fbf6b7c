"""Static int8 quantization of one exported OpenVINO graph with NNCF, calibrated on synthetic photos.

Measured on this project's CPU (bench/RESULTS.md, "Model runtimes"): BLIP's image side (the
384-px ViT and the cross-attention keys and values) in int8 with the decoder in bf16 is the
fastest captioner that meets the parity targets; the decoder is left alone (its per-token
matmuls gain little and its logits are what parity measures).
"""

from __future__ import annotations

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
