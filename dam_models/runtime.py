"""Which inference runtime runs a model, and the on-disk cache of converted models.

`DAM_RUNTIME`: ``torch`` (eager PyTorch, the parity reference in fp32), ``openvino`` (CPU only;
graphs converted once from the same folder or hub id and cached on disk), or ``auto``: OpenVINO on
a CPU where it is installed (measured fastest at parity on this project's CPUs, bench/RESULTS.md),
PyTorch on a GPU. A converted model lives under the cache folder keyed by model (its files'
identity, not just its name), kind, runtime and runtime version, and is built by one process at
a time; a second load converts nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from dam_models.cpu import cpu_has_int8_dot
from dam_models.quiet import quiet_conversion

log = logging.getLogger("dam_models.runtime")

RUNTIMES = ("auto", "torch", "openvino")
QUANTIZE = ("auto", "none", "int8")
# Bumped when the exported graphs change shape or meaning: older conversions are then rebuilt.
EXPORT_FORMAT = 2  # 2: fused attention in the BLIP decoder step


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(setting: str | None, device: str) -> str:
    """``auto`` -> ``openvino`` on a CPU where it is installed, else ``torch``; others are validated."""
    s = (setting or "auto").strip().lower()
    if s not in RUNTIMES:
        raise ValueError(f"unknown runtime {setting!r} (use auto, torch or openvino)")
    on_cpu = device == "cpu"
    if s == "auto":
        return "openvino" if on_cpu and openvino_available() else "torch"
    if s == "openvino":
        if not on_cpu:
            raise ValueError(f"runtime openvino runs on the CPU only, not on device {device!r}")
        if not openvino_available():
            raise RuntimeError("runtime openvino was requested but the openvino package is not installed")
    return s


def resolve_quantize(setting: str | None, runtime: str, int8_dot: bool | None = None) -> str:
    """``auto`` -> ``int8`` on OpenVINO where the CPU has int8 dot products (`int8_dot`, detected when
    None; measured fastest at parity there), ``none`` elsewhere (AVX2 alone: no faster than float32,
    and less exact); ``int8`` needs OpenVINO."""
    s = (setting or "auto").strip().lower()
    if s not in QUANTIZE:
        raise ValueError(f"unknown quantization {setting!r} (use auto, none or int8)")
    if s == "auto":
        return "int8" if runtime == "openvino" and (cpu_has_int8_dot() if int8_dot is None else int8_dot) else "none"
    if s == "int8" and runtime != "openvino":
        raise ValueError(f"int8 quantization runs on the openvino runtime, not {runtime}")
    return s


def runtime_version(runtime: str) -> str:
    if runtime.startswith("openvino"):
        import openvino  # the openvino runtime's only: a torch process (a GPU) never loads it

        return openvino.__version__.split("-")[0]
    return torch.__version__.split("+")[0]


def _local_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if path.suffix == ".json":  # small, and what a hand edit changes
            h.update(path.read_bytes())
    return h.hexdigest()


def source_fingerprint(model_id: str) -> str:
    """What identifies the weights: a local folder's files, or the hub snapshot's commit."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return _local_fingerprint(folder.resolve())
    cached = try_to_load_from_cache(model_id, "config.json")
    if isinstance(cached, str):  # .../snapshots/<commit>/config.json
        return "hub-" + Path(cached).parent.name
    return "hub-unresolved"  # first load downloads; the next load keys on the snapshot


def conversion_dir(cache_root: Path, kind: str, model_id: str, runtime: str) -> Path:
    """The folder holding `model_id` converted for `runtime`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model_id).strip("/"))[-60:] or "model"
    key = hashlib.sha256(
        json.dumps(
            [kind, str(model_id), source_fingerprint(model_id), runtime, runtime_version(runtime), EXPORT_FORMAT]
        ).encode()
    ).hexdigest()[:16]
    return cache_root / kind / f"{name}-{runtime}-{key}"


def build_once(folder: Path, is_built: Callable[[Path], bool], build: Callable[[Path], object]) -> bool:
    """Make sure `folder` is built: by this call (returns True) or by an earlier or concurrent one.

    The build writes into a temporary sibling that is renamed into place, under a file lock, so a
    worker killed mid-conversion leaves nothing half-written for the next one to load.
    """
    if is_built(folder):
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(folder):
            return False
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with quiet_conversion():  # tracing notes about the exported graph; the parity tests check it
                build(tmp)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted model written to %s", folder)
    return True
