"""Tiny random BLIP, CLIP and SigLIP models, written offline, for tests and smoke runs.

``write_tiny_models(DIR)`` writes ``DIR/blip`` and ``DIR/clip``: real architectures (ViT vision
towers, a BERT-style caption decoder, a CLIP text tower) at toy sizes with seeded random weights,
plus image processors and tokenizers built from vocab files generated here. Both folders load
with ``from_pretrained(folder)`` and ``HF_HUB_OFFLINE=1``, through exactly the code that loads the
real checkpoints. Each model is well under 1 MB and loads in a fraction of a second.

The captions are nonsense but well-formed: the caption decoder's output bias rules out the
special tokens ([PAD] [UNK] [CLS] [MASK] [DEC]) and favours whole words over ``##`` pieces,
so greedy decoding yields a string of words. The end-of-caption token ([SEP]) stays possible,
so captions vary in length; the captioner's default ``min_new_tokens=1`` keeps them non-empty.

``write_tiny_siglip(DIR, family)`` writes a SigLIP (``siglip``) or SigLIP 2 (``siglip2``) model the
same way. The real SigLIP tokenizer is SentencePiece (a package this project does not need) and
SigLIP 2's is Gemma's: the tiny ones are built here with the `tokenizers` library instead, each
with the behaviour of its family that the embedder depends on. SigLIP's pads on the right with
its end token and returns no attention mask (the model pools the last position, padding
included); SigLIP 2's is a `Siglip2Tokenizer` (Gemma-style byte-fallback BPE, padded on the left).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import cast

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Processor,
    Siglip2Tokenizer,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

SEED = 1234

# Vision towers: 64x64 images in 16x16 patches -> 16 patches + CLS.
IMAGE_SIZE = 64
PATCH_SIZE = 16
HIDDEN = 32
INTERMEDIATE = 64
LAYERS = 2
HEADS = 2
CLIP_PROJECTION_DIM = 24  # deliberately != HIDDEN so a wrong "dim" shows up in tests
TEXT_MAX_POSITIONS = 77
# SigLIP: its embedding is the vision tower's pooled output, so the dim is the vision width (here
# != CLIP's dim, != the text width). Text is padded to a fixed length, as SigLIP was trained (64 there).
SIGLIP_DIM = 40
SIGLIP_TEXT_LENGTH = 16
SIGLIP_MAX_PATCHES = 16  # SigLIP 2: images resized to at most 16 patches of 16x16, aspect ratio kept

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

WORDS = """
a an the of on in at with and to from by near under over behind next two three four some many
photo picture image close up view top side front back small large big little old new white black
red green blue yellow orange brown gray grey pink purple dark light bright colorful
cat cats dog dogs man woman men women person people child children boy girl baby group
car cars bus truck train plane boat bike bicycle motorcycle street road city building house
room kitchen table chair bed couch sofa window door wall floor desk computer laptop phone book
tree trees grass field park beach water sea ocean river lake sky clouds mountain mountains snow
sun sunset night day food pizza plate cake fruit bowl cup glass bottle flower flowers garden
sitting standing walking running playing holding looking eating riding laying lying flying
is are it its there this that very up down out background foreground logo text sign
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character map (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


# ----------------------------------------------------------------------------- vocab files


def _bert_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    chars = list(string.ascii_lowercase) + list(string.digits) + list(".,!?'-:;()&/\"")
    pieces = ["##" + c for c in string.ascii_lowercase + string.digits]
    pieces += ["##s", "##es", "##ed", "##ing", "##ly", "##er", "##est", "##y"]
    out: list[str] = []
    for tok in specials + chars + WORDS + pieces:
        if tok not in out:
            out.append(tok)
    return out


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Byte-level BPE vocab and merges covering WORDS (public: bench builds its full-size CLIP vocab on it)."""
    byte_chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    seen: set[str] = set()
    for word in dict.fromkeys(WORDS):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for sym in symbols[1:]:
            rule = f"{merged} {sym}"
            merged = merged + sym
            if rule not in seen:
                seen.add(rule)
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return vocab, merges


def _write_vocab_files(staging: Path) -> tuple[Path, Path]:
    bert_dir, clip_dir = staging / "bert", staging / "clip"
    bert_dir.mkdir(parents=True)
    clip_dir.mkdir(parents=True)
    (bert_dir / "vocab.txt").write_text("\n".join(_bert_vocab()) + "\n", encoding="utf-8")
    vocab, merges = clip_vocab_and_merges()
    (clip_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (clip_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return bert_dir, clip_dir


# ----------------------------------------------------------------------------- models


def _write_blip(target: Path, vocab_dir: Path) -> Path:
    tokenizer = BertTokenizer.from_pretrained(
        vocab_dir, do_lower_case=True, bos_token="[DEC]", model_max_length=TEXT_MAX_POSITIONS
    )
    vocab = tokenizer.get_vocab()
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": HIDDEN,
            "encoder_hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "projection_dim": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": TEXT_MAX_POSITIONS,
            "initializer_range": 0.2,
            "bos_token_id": vocab["[DEC]"],
            "eos_token_id": vocab["[SEP]"],
            "sep_token_id": vocab["[SEP]"],
            "pad_token_id": vocab["[PAD]"],
        },
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "projection_dim": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "initializer_range": 0.2,
        },
        projection_dim=HIDDEN,
        image_text_hidden_size=HIDDEN,
    )
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(config).eval()

    # Output bias: never a special token, whole words over word pieces, [SEP] now and then.
    bias = torch.zeros(len(vocab))
    for tok, idx in vocab.items():
        if tok.startswith("##"):
            bias[idx] = -1.0
        elif len(tok) == 1 and not tok.isalpha():
            bias[idx] = -1.0
    for tok in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]"):
        bias[vocab[tok]] = -1e4
    bias[vocab["[SEP]"]] = 0.5
    with torch.no_grad():
        head = model.text_decoder.cls.predictions
        head.bias.copy_(bias)
        if head.decoder.bias is not None and head.decoder.bias.data_ptr() != head.bias.data_ptr():
            head.decoder.bias.copy_(bias)

    image_processor = BlipImageProcessorPil(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def _write_clip(target: Path, vocab_dir: Path) -> Path:
    tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=TEXT_MAX_POSITIONS)
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "projection_dim": CLIP_PROJECTION_DIM,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": TEXT_MAX_POSITIONS,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "projection_dim": CLIP_PROJECTION_DIM,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=CLIP_PROJECTION_DIM,
    )
    torch.manual_seed(SEED + 1)
    model = CLIPModel(config).eval()

    image_processor = CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def write_tiny_models(directory: str | Path) -> tuple[Path, Path]:
    """Write tiny random BLIP (``directory/blip``) and CLIP (``directory/clip``) models; return both paths.

    Deterministic for a given transformers/torch version; existing files in the two folders are overwritten.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blip_dir, clip_dir = directory / "blip", directory / "clip"
    with tempfile.TemporaryDirectory(prefix="dam-tiny-vocab-") as tmp:
        bert_vocab, clip_vocab = _write_vocab_files(Path(tmp))
        _write_blip(blip_dir, bert_vocab)
        _write_clip(clip_dir, clip_vocab)
    return blip_dir, clip_dir


# ----------------------------------------------------------------------------- SigLIP

_SIGLIP_CHARS = list(string.ascii_lowercase + string.digits + ".,!?'-:;()&/\"")


def _siglip_tokenizer() -> PreTrainedTokenizerFast:
    """SigLIP's tokenizer behaviour (SentencePiece-style pieces, ``</s>`` appended, padded on the right
    with ``</s>``, no attention mask) as a `tokenizers` WordPiece over WORDS and single characters."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in _SIGLIP_CHARS:
        vocab.setdefault("\u2581" + c, len(vocab))
        vocab.setdefault(c, len(vocab))
    for word in WORDS:
        vocab.setdefault("\u2581" + word, len(vocab))
    tok = Tokenizer(WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix="", max_input_chars_per_word=100))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        model_max_length=SIGLIP_TEXT_LENGTH,
        model_input_names=["input_ids"],
    )


def _siglip2_tokenizer() -> Siglip2Tokenizer:
    """SigLIP 2's own tokenizer class (Gemma-style byte-fallback BPE, lower-cased) with merges for WORDS."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in ["\u2581", *_SIGLIP_CHARS]:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in dict.fromkeys(WORDS):
        merged = "\u2581"
        for ch in word:
            rule = (merged, ch)
            if rule not in seen:
                seen.add(rule)
                merges.append(rule)
            merged += ch
            vocab.setdefault(merged, len(vocab))
    # Pairs, as the tokenizers BPE takes them (transformers' annotation says strings).
    return Siglip2Tokenizer(vocab=vocab, merges=cast(list[str], merges), model_max_length=SIGLIP_TEXT_LENGTH)


def write_tiny_siglip(directory: str | Path, family: str = "siglip") -> Path:
    """Write a tiny random SigLIP (``family="siglip"``) or SigLIP 2 (``"siglip2"``) model into `directory`.

    Deterministic like `write_tiny_models`; loads offline with ``from_pretrained(directory)``.
    """
    target = Path(directory)
    text_config = {
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "projection_size": SIGLIP_DIM,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "max_position_embeddings": SIGLIP_TEXT_LENGTH,
    }
    vision_config = {
        "hidden_size": SIGLIP_DIM,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "patch_size": PATCH_SIZE,
    }
    if family == "siglip":
        tokenizer: PreTrainedTokenizerFast = _siglip_tokenizer()
        ids = {"pad_token_id": 1, "eos_token_id": 1, "bos_token_id": 1}
        config = SiglipConfig(
            text_config={**text_config, "vocab_size": len(tokenizer), **ids},
            vision_config={**vision_config, "image_size": IMAGE_SIZE},
        )
        torch.manual_seed(SEED + 2)
        model: SiglipModel | Siglip2Model = SiglipModel(config).eval()
        image_processor: SiglipImageProcessorPil | Siglip2ImageProcessorPil = SiglipImageProcessorPil(
            do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_convert_rgb=True
        )
        processor: SiglipProcessor | Siglip2Processor = SiglipProcessor(
            image_processor=image_processor, tokenizer=tokenizer
        )
    elif family == "siglip2":
        tokenizer = _siglip2_tokenizer()
        ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
        config2 = Siglip2Config(
            text_config={**text_config, "vocab_size": len(tokenizer), **ids},
            vision_config={**vision_config, "num_patches": SIGLIP_MAX_PATCHES},
        )
        torch.manual_seed(SEED + 3)
        model = Siglip2Model(config2).eval()
        image_processor = Siglip2ImageProcessorPil(patch_size=PATCH_SIZE, max_num_patches=SIGLIP_MAX_PATCHES)
        processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        raise ValueError(f"unknown SigLIP family {family!r} (use siglip or siglip2)")
    with torch.no_grad():  # trained values have this shape: a temperature near 10 and a negative bias
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-2.0)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
