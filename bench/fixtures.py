"""Benchmark fixtures: full-size BLIP/CLIP models with random weights, photo-like images, machine facts."""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import string
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

# Full-size architectures from the configs' defaults (nothing is downloaded).
BLIP_VOCAB_SIZE = 30524  # BlipTextConfig default: bert-base-uncased + [DEC] + [ENC]
CLIP_VOCAB_SIZE = 49408  # CLIPTextConfig default
BLIP_IMAGE_SIZE = 384
CLIP_IMAGE_SIZE = 224
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CAPTION_TOKENS = 20  # forced on both sides: min_new_tokens = max_new_tokens


# ----------------------------------------------------------------------------- process facts


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pid_peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of another process, MiB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pid_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    out = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": ram,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for mod in ("torch", "transformers", "duckdb", "pyarrow", "fastapi", "uvicorn", "pika", "PIL"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


# ----------------------------------------------------------------------------- images


from dam_models.calibration import photo_like  # noqa: E402  (one generator for bench and calibration)


def jpeg(img, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def seed_store(store, n_jpeg: int, n_png: int, size=(1600, 1200), png_size=(1024, 768)) -> list:
    """Write originals into the store as the API would; return their UploadMessages."""
    import hashlib
    from datetime import UTC, datetime

    from dam_core.layout import original_key
    from dam_core.messages import UploadMessage

    uploads = []
    items = [("jpg", i) for i in range(n_jpeg)] + [("png", i) for i in range(n_png)]
    for kind, i in items:
        if kind == "jpg":
            im = photo_like(*size, seed=1000 + i)
            data, ext, mime = jpeg(im), ".jpg", "image/jpeg"
        else:
            im = photo_like(*png_size, seed=5000 + i)
            if i % 2:
                im = im.convert("RGBA")
            data, ext, mime = png(im), ".png", "image/png"
        sha = hashlib.sha256(data).hexdigest()
        uid = sha[:32]
        key = original_key(uid, ext)
        store.put(key, data, content_type=mime)
        uploads.append(
            UploadMessage(
                id=uid,
                filename=f"bench-{kind}-{i}{ext}",
                r2_key=key,
                mime_type=mime,
                bytes=len(data),
                sha256=sha,
                width=im.width,
                height=im.height,
                uploaded_at=datetime.now(UTC),
            )
        )
    return uploads


# ----------------------------------------------------------------------------- models


def _bert_vocab(size: int) -> list[str]:
    """A bert-base-uncased-shaped vocab: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103, [DEC]=30522."""
    from dam_models.tiny import WORDS

    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(vocab)
    extra = list(string.ascii_lowercase + string.digits + ".,!?'-:;()&/\"") + WORDS
    extra += ["##" + c for c in string.ascii_lowercase + string.digits]
    for tok in extra:
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    n = 0
    while len(vocab) < size - 2:
        tok = f"w{n}"
        n += 1
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    return vocab + ["[DEC]", "[ENC]"]


def _clip_vocab(size: int) -> tuple[dict[str, int], list[str]]:
    from dam_models.tiny import clip_vocab_and_merges

    vocab, merges = clip_vocab_and_merges()
    specials = ("<|startoftext|>", "<|endoftext|>")
    for s in specials:
        vocab.pop(s, None)
    n = 0
    while len(vocab) < size - 2:
        vocab.setdefault(f"t{n}</w>", len(vocab))
        n += 1
    for s in specials:
        vocab[s] = len(vocab)
    return vocab, merges


def build_models(
    directory: str | Path, log=print, blip_text_heads: int | None = None, name: str = ""
) -> tuple[Path, Path]:
    """Write BLIP-base captioning (ViT-B/16 @384, bert-base decoder) and CLIP ViT-B/32 with random weights.

    Both get processors and tokenizers with vocabularies of the configs' sizes, saved with
    ``save_pretrained``, so they load through ``from_pretrained`` like the real checkpoints.
    Reused when ``directory/{name}ok.json`` says the folder is complete. `blip_text_heads`
    replaces the decoder's head count (transformers' default is 8; the real checkpoint has 12);
    `name` prefixes the folders, so two variants can share one directory.
    """
    import tempfile

    import torch
    import transformers
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
    )

    directory = Path(directory)
    blip_dir, clip_dir = directory / f"{name}blip-base-random", directory / f"{name}clip-b32-random"
    stamp = directory / f"{name}ok.json"
    want = {"transformers": transformers.__version__, "torch": torch.__version__, "v": 3, "heads": blip_text_heads}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return blip_dir, clip_dir
    t0 = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-vocab-") as tmp:
        tmp = Path(tmp)
        (tmp / "bert").mkdir()
        (tmp / "bert" / "vocab.txt").write_text("\n".join(_bert_vocab(BLIP_VOCAB_SIZE)) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer.from_pretrained(
            tmp / "bert", do_lower_case=True, bos_token="[DEC]", model_max_length=512
        )
        assert len(tokenizer) == BLIP_VOCAB_SIZE, len(tokenizer)
        # Defaults: ViT-B/16 at 384 px, bert-base text decoder, vocab 30524. Only the vision tower's
        # init std changes: its default (1e-10) gives activations near the denormal range, which
        # neither real checkpoints nor a fair timing have; 0.02 is what the text side already uses.
        text = (
            {}
            if blip_text_heads is None
            else {"num_attention_heads": blip_text_heads, "sep_token_id": 102, "pad_token_id": 0}
        )
        config = BlipConfig(text_config=text, vision_config={"initializer_range": 0.02})
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(config).eval()
        processor = BlipProcessor(
            image_processor=BlipImageProcessorPil(
                do_resize=True,
                size={"height": BLIP_IMAGE_SIZE, "width": BLIP_IMAGE_SIZE},
                do_rescale=True,
                do_normalize=True,
                image_mean=OPENAI_CLIP_MEAN,
                image_std=OPENAI_CLIP_STD,
                do_convert_rgb=True,
            ),
            tokenizer=tokenizer,
        )
        model.save_pretrained(blip_dir)
        processor.save_pretrained(blip_dir)
        del model
        log(f"  BLIP base written in {time.perf_counter() - t0:.1f}s")

        (tmp / "clip").mkdir()
        vocab, merges = _clip_vocab(CLIP_VOCAB_SIZE)
        (tmp / "clip" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "clip" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        ctok = CLIPTokenizer.from_pretrained(tmp / "clip", model_max_length=77)
        assert len(ctok) == CLIP_VOCAB_SIZE, len(ctok)
        cconfig = CLIPConfig()  # defaults: ViT-B/32 at 224 px, 512-d projection
        torch.manual_seed(1)
        cmodel = CLIPModel(cconfig).eval()
        cproc = CLIPProcessor(
            image_processor=CLIPImageProcessorPil(
                do_resize=True,
                size={"shortest_edge": CLIP_IMAGE_SIZE},
                do_center_crop=True,
                crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
                do_rescale=True,
                do_normalize=True,
                image_mean=OPENAI_CLIP_MEAN,
                image_std=OPENAI_CLIP_STD,
                do_convert_rgb=True,
            ),
            tokenizer=ctok,
        )
        cmodel.save_pretrained(clip_dir)
        cproc.save_pretrained(clip_dir)
        del cmodel
    stamp.write_text(json.dumps(want))
    log(f"  BLIP base + CLIP B/32 written to {directory} in {time.perf_counter() - t0:.1f}s")
    return blip_dir, clip_dir


def env_offline() -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_json_subprocess(args: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `python -m ...` and parse the last stdout line as JSON; stderr passes through."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
        env=env or env_offline(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- contention


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(v) for v in parts[:8]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


class CpuMonitor:
    """How busy the whole machine was during a measurement, in cores.

    Other sessions may share these 2 cores; every figure is printed with the machine's busy
    cores, our own processes' share (this process, waited-for children, and the `pids` given:
    servers, the load generator) and the rest, so a noisy number can be recognised as such.
    `broker_pids` (RabbitMQ) are reported apart: part of the workload, not ours.
    """

    def __init__(self, pids: list[int] | None = None, broker_pids: list[int] | None = None):
        self.pids = list(pids or [])
        self.broker_pids = list(broker_pids or [])
        self.t0 = time.perf_counter()
        self.j0 = _cpu_jiffies()
        self.own0 = self._own()
        self.p0 = {p: pid_cpu(p) for p in self.pids + self.broker_pids}

    @staticmethod
    def _own() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy1, total1 = _cpu_jiffies()
        busy = busy1 - self.j0[0]
        total = total1 - self.j0[1]
        cores = os.cpu_count() or 1
        busy_cores = cores * busy / total if total else 0.0
        own = self._own() - self.own0
        own += sum(max(0.0, (pid_cpu(p) or 0.0) - (self.p0.get(p) or 0.0)) for p in self.pids)
        broker = sum(max(0.0, (pid_cpu(p) or 0.0) - (self.p0.get(p) or 0.0)) for p in self.broker_pids)
        own_c, broker_c = (own / wall, broker / wall) if wall else (0.0, 0.0)
        out = {
            "wall_s": round(wall, 2),
            "machine_busy_cores": round(busy_cores, 2),
            "bench_cores": round(own_c, 2),
        }
        if self.broker_pids:
            out["broker_cores"] = round(broker_c, 2)
        out["other_cores"] = round(max(0.0, busy_cores - own_c - broker_c), 2)
        return out


def pid_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM, when it runs on this machine (for the CPU report only)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip().startswith("beam"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def other_load(seconds: float = 1.0) -> float:
    """Cores busy right now (nothing of ours running): a quick check before a measurement."""
    j0 = _cpu_jiffies()
    time.sleep(seconds)
    j1 = _cpu_jiffies()
    total = j1[1] - j0[1]
    return round((os.cpu_count() or 1) * (j1[0] - j0[0]) / total, 2) if total else 0.0
