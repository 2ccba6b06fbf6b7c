"""BLIP captioning on OpenVINO: export the two graphs of `blip_graphs` once, then greedy decoding in numpy.

Export (`export_blip`) writes `image_side.xml` and `decoder_step.xml` (+ `.bin`) into a folder;
`OpenVinoBlip` compiles them for the CPU at the asked precision and runs HF's greedy search
(same BOS, end token, pad and minimum length), checked token for token against `generate`.

Two measured details (bench/RESULTS.md): the caches live as OpenVINO tensors handed straight
from one request to the next, and OpenVINO's default precision on a CPU with AVX512-BF16 is
already bf16, so fp32 is asked for explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from openvino.preprocess import PrePostProcessor

from dam_models.blip_graphs import MASKED, BlipDecoderStep, BlipImageSide

IMAGE_SIDE, DECODER_STEP, META = "image_side.xml", "decoder_step.xml", "meta.json"
# Cache slots: BOS plus up to this many generated tokens (the settings cap max_new_tokens below it).
MAX_CACHE_LEN = 64

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def export_blip(model, folder: Path, max_len: int = MAX_CACHE_LEN) -> Path:
    """Convert a loaded fp32 HF BLIP into the two OpenVINO graphs under `folder`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    side, step = BlipImageSide(model).eval(), BlipDecoderStep(model).eval()
    size = int(model.config.vision_config.image_size)
    layers, heads, head_dim = len(step.layers), step.heads, step.head_dim
    with torch.no_grad():
        pixels = torch.zeros(1, 3, size, size)
        cross_k, cross_v = side(pixels)
        tokens = int(cross_k.shape[3])
        image_side = ov.convert_model(
            side, example_input=(pixels,), input=[("pixel_values", [-1, 3, size, size], ov.Type.f32)]
        )
        cache = [layers, -1, heads, max_len, head_dim]
        cross = [layers, -1, heads, tokens, head_dim]
        example = (
            torch.ones(1, 1, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
            torch.zeros(1, 1, 1, max_len),
            torch.zeros(layers, 1, heads, max_len, head_dim),
            torch.zeros(layers, 1, heads, max_len, head_dim),
            cross_k,
            cross_v,
        )
        decoder_step = ov.convert_model(
            step,
            example_input=example,
            input=[
                ("input_ids", [-1, 1], ov.Type.i64),
                ("position_ids", [-1, 1], ov.Type.i64),
                ("self_mask", [-1, 1, 1, max_len], ov.Type.f32),
                ("past_k", cache, ov.Type.f32),
                ("past_v", cache, ov.Type.f32),
                ("cross_k", cross, ov.Type.f32),
                ("cross_v", cross, ov.Type.f32),
            ],
        )
    image_side.inputs[0].get_tensor().set_names({"pixel_values"})
    for out, name in zip(image_side.outputs, ("cross_k", "cross_v"), strict=True):
        out.get_tensor().set_names({name})
    for out, name in zip(decoder_step.outputs, ("logits", "new_k", "new_v"), strict=True):
        out.get_tensor().set_names({name})
    # Weights stay fp32 on disk: the precision is chosen when compiling, so one export serves all.
    ov.save_model(image_side, folder / IMAGE_SIDE, compress_to_fp16=False)
    ov.save_model(decoder_step, folder / DECODER_STEP, compress_to_fp16=False)
    text = model.config.text_config
    meta = {
        "max_len": max_len,
        "layers": layers,
        "heads": heads,
        "head_dim": head_dim,
        "tokens": tokens,
        "bos_token_id": int(text.bos_token_id),
        "eos_token_id": int(text.sep_token_id),
        "pad_token_id": int(text.pad_token_id),
        "vocab_size": int(text.vocab_size),
    }
    (folder / META).write_text(json.dumps(meta, indent=1))
    return folder


def compile_without_snippets(core: ov.Core, model, config: dict):
    """`model` compiled for the CPU with its attention as plain matmuls and softmax, not Snippets subgraphs.

    A decoder step attends with one query per image over every layer's cross-attention keys and values
    (340 MB at 16 images in bf16): as matmuls (brgemm) they are read at close to memory speed, as the
    CPU plugin's default Snippets MHA subgraph at about two thirds of it. Measured on an AMX Xeon:
    47 -> 37 ms a step at 16 images, the attention 28 -> 19.4 ms (bench/NOTES.md, session 14). The image
    side's attention (577 queries) keeps Snippets: without them it took 1.5 -> 2.2 s a chunk.
    SNIPPETS_MODE is the CPU plugin's own property; a build that does not take it compiles as usual.
    """
    try:
        return core.compile_model(model, "CPU", {**config, "SNIPPETS_MODE": "DISABLE"})
    except RuntimeError:
        return core.compile_model(model, "CPU", config)


def is_exported(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (IMAGE_SIDE, DECODER_STEP, META))


class OpenVinoBlip:
    """The exported BLIP graphs compiled for one device and precision; greedy captions as token ids."""

    def __init__(self, folder: Path, precision: str = "fp32", threads: int | None = None):
        self.meta = json.loads((folder / META).read_text())
        self.precision = precision
        config: dict[str, str | int] = {
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        # The caches cross between the two graphs and numpy in the compute precision: converting
        # fp32 caches on every step was half of a bf16 step's time.
        self._cache_type = ov.Type.bf16 if precision == "bf16" else ov.Type.f32
        self._cache_np = np.uint16 if precision == "bf16" else np.float32  # bf16 bits, copied, never computed on
        core = ov.Core()
        image = self._typed(core.read_model(folder / IMAGE_SIDE), (), ("cross_k", "cross_v"))
        step = self._typed(
            core.read_model(folder / DECODER_STEP), ("past_k", "past_v", "cross_k", "cross_v"), ("new_k", "new_v")
        )
        self._image = core.compile_model(image, "CPU", config)
        self._step = compile_without_snippets(core, step, config)

    def _typed(self, model, inputs, outputs):
        if self._cache_type.get_type_name() == "f32":
            return model
        ppp = PrePostProcessor(model)
        for name in inputs:
            ppp.input(name).tensor().set_element_type(self._cache_type)
        for name in outputs:
            ppp.output(name).tensor().set_element_type(self._cache_type)
        return ppp.build()

    def _steps(self, pixel_values: np.ndarray):
        """A generator over steps: send token ids (B,), receive the logits (B, vocab) for the next token."""
        m = self.meta
        batch = pixel_values.shape[0]
        image = self._image.create_infer_request()
        image.infer({"pixel_values": np.ascontiguousarray(pixel_values, np.float32)})
        request = self._step.create_infer_request()
        request.set_tensor("cross_k", image.get_tensor("cross_k"))  # handed over as they are, no copy
        request.set_tensor("cross_v", image.get_tensor("cross_v"))
        shape = (m["layers"], batch, m["heads"], m["max_len"], m["head_dim"])
        past_k, past_v = np.zeros(shape, self._cache_np), np.zeros(shape, self._cache_np)
        request.set_tensor("past_k", ov.Tensor(past_k, shape, self._cache_type))  # shares past_k's memory
        request.set_tensor("past_v", ov.Tensor(past_v, shape, self._cache_type))
        mask = np.full((batch, 1, 1, m["max_len"]), MASKED, np.float32)
        t = 0
        ids = yield None
        while True:
            if t >= m["max_len"]:
                raise ValueError(f"caption longer than the exported cache of {m['max_len']} tokens")
            request.infer(
                {
                    "input_ids": ids.reshape(batch, 1).astype(np.int64),
                    "position_ids": np.full((batch, 1), t, np.int64),
                    "self_mask": mask,
                }
            )
            past_k[:, :, :, t] = request.get_tensor("new_k").data.view(self._cache_np)[:, :, :, 0]
            past_v[:, :, :, t] = request.get_tensor("new_v").data.view(self._cache_np)[:, :, :, 0]
            mask[..., t] = 0.0
            t += 1
            ids = yield np.array(request.get_tensor("logits").data, np.float32)

    def generate(self, pixel_values: np.ndarray, max_new_tokens: int, min_new_tokens: int = 1) -> np.ndarray:
        """Greedy token ids (B, 1 + up to max_new_tokens), BOS first and pad after the end token, as HF's generate."""
        m = self.meta
        if max_new_tokens + 1 > m["max_len"]:
            raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the exported cache ({m['max_len'] - 1})")
        batch = pixel_values.shape[0]
        steps = self._steps(pixel_values)
        next(steps)
        ids = np.full(batch, m["bos_token_id"], np.int64)
        out = [ids]
        done = np.zeros(batch, bool)
        for i in range(max_new_tokens):
            logits = steps.send(ids)
            if i < min_new_tokens:
                logits[:, m["eos_token_id"]] = -np.inf
            ids = np.where(done, m["pad_token_id"], logits.argmax(-1)).astype(np.int64)
            out.append(ids)
            done |= ids == m["eos_token_id"]
            if done.all():
                break
        steps.close()
        return np.stack(out, axis=1)

    def prefix_logits(self, pixel_values: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """Teacher-forced next-token logits (B, len(prefix), vocab) after each token of `prefix` (B, n)."""
        steps = self._steps(pixel_values)
        next(steps)
        result = [steps.send(prefix[:, i]) for i in range(prefix.shape[1])]
        steps.close()
        return np.stack(result, axis=1)
