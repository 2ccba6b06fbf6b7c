"""`dam models tiny DIR` (tiny random models), `prepare` (load and convert once), `serve` (warm models for runs)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dam_cli._common import settings_or_exit


def cmd_models_tiny(args) -> int:
    # The model libraries are imported by the command that uses them: torch and transformers take
    # seconds, Dagster (the resource) and numpy a good part of one, and `dam --help` needs none.
    from dam_models.tiny import write_tiny_models, write_tiny_siglip

    blip, clip = write_tiny_models(Path(args.dir))
    if args.siglip:  # DIR/siglip (or DIR/siglip2) beside them, and the embedding model set to it
        clip = write_tiny_siglip(Path(args.dir) / args.siglip, args.siglip)
    print(f"export DAM_CAPTION_MODEL={blip}\nexport DAM_EMBEDDING_MODEL={clip}")
    return 0


def _resource(settings):
    """The models as a run configures them; these commands load them here (never from a model server: they make one)."""
    from dam_assets.resources import ModelsResource  # Dagster: see cmd_models_tiny

    return ModelsResource.from_settings(settings)


def cmd_models_prepare(args) -> int:
    """Load the configured models as a run would, converting them for the runtime where needed (cached on disk)."""
    settings = settings_or_exit()
    started = time.perf_counter()
    try:
        models = _resource(settings)
        captioner, embedder = models.load_captioner(), models.load_embedder()
        from dam_models.embedder import get_query_encoder  # torch: see _resource

        queries = get_query_encoder(  # the API's and `dam search`'s text queries: their own conversion
            settings.dam_embedding_model,
            settings.dam_device,
            settings.dam_dtype,
            settings.dam_runtime,
            settings.model_cache_dir,
        )
    except Exception as err:  # a missing model or an offline hub: say which, and fail
        print(f"dam models prepare: {type(err).__name__}: {err}"[:800], file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"captions:   {captioner.model_id} ({captioner.describe()})")
        print(f"embeddings: {embedder.model_id} ({embedder.describe()})")
        print(f"queries:    {queries.model_id} ({queries.describe()})")
        print(f"ready in {time.perf_counter() - started:.1f} s; converted models in {settings.model_cache_dir}")
    return 0


def _warm_up(models, captioner, embedder) -> None:
    """One chunk through each model before the socket opens: a runtime's first call at a shape
    allocates and compiles for it (seconds on OpenVINO), which the first batch would pay."""
    from dam_models.calibration import photo_like  # numpy and Pillow: see cmd_models_tiny

    chunk = models.chunk_size(captioner.device)
    images = [photo_like(640, 480, seed=i) for i in range(chunk)]
    captioner.caption(images, batch_size=chunk)
    embedder.embed_images(images, batch_size=chunk)
    embedder.embed_texts(["a photo"])


def _convert_query_encoder(settings) -> None:
    """The API's query encoder converted beside the models (a few seconds, once per model): under `dam dev`
    the first search would pay it. A failure here only leaves that to the first search."""
    from dam_models.embedder import convert_query_encoder  # torch: see _resource

    try:
        convert_query_encoder(
            settings.dam_embedding_model,
            settings.dam_device,
            settings.dam_dtype,
            settings.dam_runtime,
            settings.model_cache_dir,
        )
    except Exception as err:
        print(
            f"dam models serve: the query encoder's conversion failed: {type(err).__name__}: {err}"[:800],
            file=sys.stderr,
        )


def cmd_models_serve(args) -> int:
    """Hold the models warm and answer runs on a Unix socket (what `dam dev` starts)."""
    settings = settings_or_exit()
    from dam_models.serving import serve  # numpy: see cmd_models_tiny

    socket_path = Path(args.socket) if args.socket else settings.model_server_socket
    started = time.perf_counter()
    try:
        models = _resource(settings)
        captioner, embedder = models.load_captioner(), models.load_embedder()
        _warm_up(models, captioner, embedder)
    except Exception as err:
        print(f"dam models serve: {type(err).__name__}: {err}"[:800], file=sys.stderr)
        return 1
    _convert_query_encoder(settings)
    print(
        f"dam models serve: {captioner.describe()} and {embedder.describe()} ready in "
        f"{time.perf_counter() - started:.1f} s on {socket_path}",
        file=sys.stderr,
        flush=True,
    )
    serve(socket_path, captioner, embedder, texts=_vocabulary_prompts(models))
    return 0


def _vocabulary_prompts(models) -> list[list[str]]:
    """The tag vocabulary's prompts, which every run asks the server to embed: embedded before the first run."""
    from dam_models.tagging import label_prompts  # numpy: see cmd_models_tiny

    try:
        prompts = label_prompts(models.vocabulary())
    except (OSError, UnicodeDecodeError) as err:  # an unreadable DAM_TAGS_FILE: each run reports it itself
        print(f"dam models serve: the tag vocabulary was not embedded ahead: {err}"[:800], file=sys.stderr)
        return []
    return [prompts] if prompts else []  # an empty vocabulary: runs tag nothing and ask for nothing


def register(sub) -> None:
    s = sub.add_parser("models", help="model utilities")
    msub = s.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("tiny", help="write tiny random BLIP and CLIP models to DIR/blip and DIR/clip")
    t.add_argument("dir")
    t.add_argument(
        "--siglip",
        nargs="?",
        const="siglip",
        choices=["siglip", "siglip2"],
        help="also write a tiny SigLIP (or SigLIP 2) model to DIR/siglip (DIR/siglip2) and export it as the embedding model",
    )
    t.set_defaults(func=cmd_models_tiny)
    p = msub.add_parser(
        "prepare", help="load the configured models once, converting them for DAM_RUNTIME (cached; runs then load warm)"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_models_prepare)
    v = msub.add_parser("serve", help="hold the models warm for runs, on a Unix socket (dam dev starts it)")
    v.add_argument("--socket", help="default: DATA_DIR/run/models.sock")
    v.set_defaults(func=cmd_models_serve)
