"""Warm models for short-lived run processes: one long-lived local process holds them, runs call it.

Under `dagster dev` every batch is a fresh run process; loading the models (and importing torch)
in each cost seconds per batch. `dam dev` therefore starts `dam models serve`, which loads the
captioner and embedder once and answers on a Unix socket; a run that finds the socket (its path
in `DAM_MODEL_SERVER`) sends its decoded images there and never imports torch. Nothing about
recovery changes: the server holds no state of any run; a run that cannot reach it, or finds it
serving other models than the run's settings name, loads the models itself as before.

Each chunk's images go to the server once, for both models (`model_inputs`), from the step's
prefetch thread, ahead of the model calls (the server makes the models' inputs on the connection's thread,
while the models work on the previous chunk, and keeps it under a key); the model call itself then
sends only that key. Before, each model call carried the chunk's decoded images (about 23 MB for
16 photos) and the server prepared them under the models' lock: under `dagster dev` the models
waited 0.4-0.6 s between calls. A key the server no longer holds (it keeps READY_MAX inputs, the
oldest dropped first; or it restarted) is answered as missing, and the client sends the images
with the call instead.

This module is torch-free on the client side (`RemoteCaptioner`, `RemoteEmbedder`, `connect`);
`serve` imports the model classes.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("dam_models.serving")

PROTOCOL = 3  # 3: prepare takes several models (one transfer of a chunk's images for both)
# Not a secret between users (the socket's folder permissions are the boundary): it keeps other
# programs' stray connections from being unpickled as requests.
AUTHKEY = b"dam-models-v1"
# Text embeddings kept per list of texts: each run process asks for the tag vocabulary's once
# (hundreds of prompts, 0.3-0.5 s on a CPU), and a run is a new process under `dagster dev`.
TEXTS_MEMO_SIZE = 8
# Prepared model inputs held for calls to come: a run keeps at most its prefetch depth + 1 chunks
# per model, so this covers a few runs at once; a key dropped early only costs a resend.
READY_MAX = 16


class ServerUnavailable(Exception):
    """No model server at that address, or it answered with an error."""


class _Channel:
    """One connection to the server, used by one request at a time."""

    def __init__(self, address: str):
        self.address = address
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def call(self, *request) -> Any:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = Client(self.address, family="AF_UNIX", authkey=AUTHKEY)
                self._conn.send(request)
                ok, value = self._conn.recv()
            except (OSError, EOFError) as err:
                self._conn = None
                raise ServerUnavailable(f"model server at {self.address}: {type(err).__name__}: {err}") from None
        if not ok:
            raise ServerUnavailable(f"model server at {self.address} failed: {value}")
        return value


@dataclass(frozen=True)
class Ready:
    """A model input the server prepared and holds under `key`; `images` are sent again if it dropped it."""

    key: int
    images: list


class _Remote:
    """A client object: one connection for model calls, another for preparing inputs ahead of them
    (the step's prefetch thread prepares the next chunk while the main thread waits on a model call)."""

    def __init__(self, address: str, info: dict):
        self.address = address
        self.info = info
        self._calls = _Channel(address)
        self._prepares = _Channel(address)

    def _call(self, *request) -> Any:
        return self._calls.call(*request)

    def _prepare(self, models: tuple[str, ...], images) -> list[Ready]:
        """Each of `models`' input made by the server from one transfer of `images`."""
        images = list(images)
        return [Ready(key, images) for key in self._prepares.call("prepare", (models, images))]

    def _run(self, kind: str, inputs) -> Any:
        """`kind` on a prepared input (its key; the images again when the server no longer holds it) or on images."""
        if isinstance(inputs, Ready):
            found, value = self._call(f"{kind}_ready", inputs.key)
            if found:
                return value
            inputs = inputs.images
        return self._call(kind, list(inputs))

    def describe(self) -> str:
        return f"{self.info['describe']} in the model server (pid {self.info['pid']})"

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def device(self) -> str:
        return self.info["device"]

    @property
    def version(self) -> str:
        return self.info["version"]


class RemoteCaptioner(_Remote):
    """The Captioner interface the enrichment step uses, served by another process."""

    def pixel_values(self, images) -> Ready:
        return self._prepare(("caption",), images)[0]  # the images travel as decoded (reduced), once

    def caption_pixels(self, images) -> list[str]:
        return self._run("caption", images)

    def caption(self, images, batch_size: int = 16) -> list[str]:
        images = list(images)
        return [c for i in range(0, len(images), batch_size) for c in self.caption_pixels(images[i : i + batch_size])]


class RemoteEmbedder(_Remote):
    """The Embedder interface the enrichment step and the tags use, served by another process."""

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def logit_scale(self) -> float:
        return float(self.info["logit_scale"])

    @property
    def logit_bias(self) -> float:
        return float(self.info.get("logit_bias", 0.0))

    @property
    def family(self) -> str:
        """clip, siglip or siglip2: how the tags are scored (dam_models.tagging)."""
        return str(self.info.get("family", "clip"))

    def pixel_values(self, images) -> Ready:
        return self._prepare(("embed",), images)[0]

    def embed_pixels(self, images) -> np.ndarray:
        return self._run("embed_images", images)

    def embed_images(self, images, batch_size: int = 32) -> np.ndarray:
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(
            [self.embed_pixels(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )

    def embed_texts(self, texts, batch_size: int = 256) -> np.ndarray:
        return self._call("embed_texts", [str(t) for t in texts])


def model_inputs(captioner, embedder, images) -> tuple[Any, Any]:
    """The captioner's and the embedder's inputs for `images` (None for a model that is None).

    Two models of one server get the images in one request, which makes both inputs: a chunk of 16
    photos is about 23 MB pickled, and sending it twice cost the run process ~0.25 s per chunk and
    delayed the first chunk's caption by as much (bench/NOTES.md, session 14).
    """
    if (
        isinstance(captioner, RemoteCaptioner)
        and isinstance(embedder, RemoteEmbedder)
        and captioner.address == embedder.address
    ):
        caption, embed = captioner._prepare(("caption", "embed"), images)
        return caption, embed
    return (
        captioner.pixel_values(images) if captioner is not None else None,
        embedder.pixel_values(images) if embedder is not None else None,
    )


def connect(address: str | os.PathLike | None) -> tuple[RemoteCaptioner, RemoteEmbedder]:
    """Clients for the server at `address`; ServerUnavailable when none answers there."""
    if not address or not Path(address).exists():
        raise ServerUnavailable(f"no model server socket at {address}")
    probe = _Remote(str(address), {})
    info = probe._call("info")
    if info.get("protocol") != PROTOCOL:
        raise ServerUnavailable(f"model server at {address} speaks protocol {info.get('protocol')}, not {PROTOCOL}")
    return RemoteCaptioner(str(address), info["captioner"]), RemoteEmbedder(str(address), info["embedder"])


def serve(
    address: str | os.PathLike,
    captioner,
    embedder,
    ready: threading.Event | None = None,
    texts: Sequence[Sequence[str]] = (),
) -> None:
    """Answer requests on the Unix socket `address` until the process is stopped (one thread per connection).

    `texts`: lists of texts embedded before the socket opens, so that runs asking for them (the tag
    vocabulary's prompts, which every run asks for) find them memoized: the first run after a start
    paid 0.4-0.6 s for them on its critical path (bench/NOTES.md, session 14).
    """
    path = Path(address)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a socket left by a killed server
    models_lock = threading.Lock()  # one model call at a time: each already uses every core
    info = {
        "protocol": PROTOCOL,
        "captioner": {
            "model_id": captioner.model_id,
            "version": captioner.version,
            "describe": captioner.describe(),
            "device": captioner.device,
            "pid": os.getpid(),
        },
        "embedder": {
            "model_id": embedder.model_id,
            "version": embedder.version,
            "describe": embedder.describe(),
            "device": embedder.device,
            "pid": os.getpid(),
            "dim": embedder.dim,
            "logit_scale": embedder.logit_scale,
            "logit_bias": getattr(embedder, "logit_bias", 0.0),
            "family": getattr(embedder, "family", "clip"),
        },
    }

    texts_memo: OrderedDict[tuple[str, ...], Any] = OrderedDict()  # the tag vocabulary, asked by every run
    memo_lock = threading.Lock()
    prepared: OrderedDict[int, Any] = OrderedDict()  # inputs made ahead, by key, oldest first
    keys = itertools.count(1)
    makers = {"caption": captioner.pixel_values, "embed": embedder.pixel_values}

    def prepare(model: str, images) -> int:
        """The model's input made now, on this connection's thread (not under the models' lock)."""
        inputs = makers[model](images)
        with memo_lock:
            key = next(keys)
            prepared[key] = inputs
            while len(prepared) > READY_MAX:
                prepared.popitem(last=False)
        return key

    def embed_texts(payload) -> Any:
        """Text embeddings, memoized per list of texts (the last TEXTS_MEMO_SIZE lists)."""
        key = tuple(payload)
        with memo_lock:
            if key in texts_memo:
                texts_memo.move_to_end(key)
                return texts_memo[key]
        with models_lock:
            vectors = embedder.embed_texts(list(payload))
        with memo_lock:
            texts_memo[key] = vectors
            while len(texts_memo) > TEXTS_MEMO_SIZE:
                texts_memo.popitem(last=False)
        return vectors

    def take(key: int) -> Any:
        with memo_lock:
            return prepared.pop(key, None)

    def answer(kind: str, payload):
        if kind == "info":
            return info
        if kind == "prepare":
            models, images = payload
            return [prepare(model, images) for model in models]
        if kind in ("caption_ready", "embed_images_ready"):
            inputs = take(payload)
            if inputs is None:
                return False, None  # dropped (or never made here): the client sends the images
            with models_lock:
                if kind == "caption_ready":
                    return True, captioner.caption_pixels(inputs)
                return True, embedder.embed_pixels(inputs)
        if kind == "embed_texts":
            return embed_texts(payload)
        with models_lock:
            if kind == "caption":
                return captioner.caption_pixels(captioner.pixel_values(payload)) if payload else []
            if kind == "embed_images":
                return embedder.embed_images(payload)
        raise ValueError(f"unknown request {kind!r}")

    def handle(conn: Connection) -> None:
        with conn:
            while True:
                try:
                    kind, *rest = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    conn.send((True, answer(kind, rest[0] if rest else None)))
                except Exception as err:  # the run sees it and fails or retries; the server goes on
                    log.exception("model server: %s failed", kind)
                    conn.send((False, f"{type(err).__name__}: {err}"[:1000]))

    for listed in texts:
        embed_texts([str(t) for t in listed])
    with Listener(str(path), family="AF_UNIX", authkey=AUTHKEY) as listener:
        os.chmod(path, 0o600)
        if ready is not None:
            ready.set()
        while True:
            try:
                conn = listener.accept()
            except Exception:  # a client that failed the handshake: not ours
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True, name="model-client").start()
