"""BLIP captioning as two exportable graphs: the image side once, then one decoder step per token.

HF's `generate` is a Python loop over a growing cache; an inference runtime (OpenVINO) wants
static, side-effect-free graphs. So BLIP is cut in two:

- `BlipImageSide`: the vision encoder, plus every decoder layer's cross-attention keys and
  values of the image tokens (they never change while a caption is generated). The attention
  scale is folded into the keys here, once, instead of rescaling them at every step.
- `BlipDecoderStep`: one token through the text decoder over a *fixed-size* self-attention
  cache (`max_len` slots, an additive mask marking the filled ones). It returns the logits and
  this token's keys and values; the caller writes them into slot `t`. A cache that grows from
  empty gave wrong logits from step 15 on in OpenVINO 2026.4's CPU plugin; a fixed size is
  correct and fastest.

Both are plain `torch.nn.Module`s over the loaded HF model's own weights, so fp32 PyTorch on
them reproduces HF's logits (dam_assets_tests/test_runtimes.py checks it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

MASKED = -1e4  # additive mask for empty cache slots (finite: bf16 and fp16 safe)


class BlipImageSide(nn.Module):
    """pixel_values (B,3,H,W) -> cross_k, cross_v (layers, B, heads, tokens, head_dim); keys pre-scaled."""

    def __init__(self, blip):
        super().__init__()
        self.vision = blip.vision_model
        self.layers = blip.text_decoder.bert.encoder.layer
        cfg = blip.text_decoder.config
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.vision(pixel_values=pixel_values)[0]
        b, s, _ = image.shape
        scale = 1.0 / math.sqrt(self.head_dim)
        ks, vs = [], []
        for layer in self.layers:
            att = layer.crossattention.self
            ks.append(att.key(image).view(b, s, self.heads, self.head_dim).transpose(1, 2) * scale)
            vs.append(att.value(image).view(b, s, self.heads, self.head_dim).transpose(1, 2))
        return torch.stack(ks), torch.stack(vs)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # One fused attention op (the scale is already in q or k): OpenVINO runs it as one kernel over the
    # keys and values; the decoder steps took about 6% less time than matmul, softmax, matmul (bench/NOTES.md).
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


class BlipDecoderStep(nn.Module):
    """One token of BLIP's text decoder over a fixed-size self-attention cache.

    Inputs: input_ids (B,1) int64, position_ids (B,1) int64, self_mask (B,1,1,max_len) additive,
    past_k / past_v (layers, B, heads, max_len, head_dim), cross_k / cross_v from BlipImageSide.
    Outputs: logits (B, vocab), new_k / new_v (layers, B, heads, 1, head_dim).
    """

    def __init__(self, blip):
        super().__init__()
        dec = blip.text_decoder
        self.embeddings = dec.bert.embeddings
        self.layers = dec.bert.encoder.layer
        self.head = dec.cls
        cfg = dec.config
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return x.view(b, 1, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return x.transpose(1, 2).reshape(b, 1, self.heads * self.head_dim)

    def forward(self, input_ids, position_ids, self_mask, past_k, past_v, cross_k, cross_v):
        emb = self.embeddings
        h = emb.LayerNorm(emb.word_embeddings(input_ids) + emb.position_embeddings(position_ids))
        scale = 1.0 / math.sqrt(self.head_dim)
        # The token attends to itself too: its own slot is appended to the cache with mask 0.
        mask = torch.cat([self_mask, torch.zeros_like(self_mask[..., :1])], dim=-1)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            q = self._split(sa.query(h)) * scale
            k = self._split(sa.key(h))
            v = self._split(sa.value(h))
            new_k.append(k)
            new_v.append(v)
            ctx = _attend(q, torch.cat([past_k[i], k], dim=2), torch.cat([past_v[i], v], dim=2), mask)
            h = layer.attention.output(self._merge(ctx), h)
            ca = layer.crossattention.self
            ctx = _attend(self._split(ca.query(h)), cross_k[i], cross_v[i], None)
            h = layer.crossattention.output(self._merge(ctx), h)
            h = layer.output(layer.intermediate(h), h)
        logits = self.head(h)[:, 0, :]
        return logits, torch.stack(new_k), torch.stack(new_v)
