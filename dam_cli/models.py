"""`dam models tiny DIR`: tiny random BLIP and CLIP models for offline runs."""

from __future__ import annotations

from pathlib import Path


def cmd_models_tiny(args) -> int:
    from dam_models.tiny import write_tiny_models

    blip, clip = write_tiny_models(Path(args.dir))
    print(f"export DAM_CAPTION_MODEL={blip}\nexport DAM_EMBEDDING_MODEL={clip}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("models", help="model utilities")
    msub = s.add_subparsers(dest="models_command", required=True)
    t = msub.add_parser("tiny", help="write tiny random BLIP and CLIP models to DIR/blip and DIR/clip")
    t.add_argument("dir")
    t.set_defaults(func=cmd_models_tiny)
