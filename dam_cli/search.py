"""`dam search`: find images by the text written in them and by meaning, from the search index the pipeline keeps."""

from __future__ import annotations

import json
import sys

from dam_cli._common import dam_or_exit, existing_store, say_no_data


def cmd_search(args) -> int:
    dam = dam_or_exit()
    settings = dam.settings
    text = args.text.strip()
    if not text:
        print("dam search: the query is empty", file=sys.stderr)
        return 2
    if not 1 <= args.k <= 1000:
        print("dam search: --k must be between 1 and 1000", file=sys.stderr)
        return 2
    from dam_ingest_api.catalog import Catalog, SearchUnavailable  # the index's libraries: not for `dam --help`

    store = existing_store(dam)
    catalog = Catalog(settings, store) if store is not None else None
    if catalog is None or catalog.snapshot is None:
        say_no_data("search", "search index", settings, "it is built after the first batch is processed")
        return 1
    try:
        items = catalog.search_text(text, args.k, args.mode)
    except SearchUnavailable as err:
        print(f"dam search: {err}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(items, indent=1, ensure_ascii=False))
        return 0
    for rank, it in enumerate(items, 1):
        tags = ", ".join(it["tags"])
        print(
            f"{rank:>3}  {it['score']:.4f} {it['match']:<7}  {it['id']}  {it['filename']}\n       {it['caption'] or ''}"
            + (f"  [{tags}]" if tags else "")
        )
    if not items:
        print("no results")
    return 0


def register(sub) -> None:
    s = sub.add_parser("search", help="find images by the text in them (OCR) and by meaning, from the search index")
    s.add_argument("text")
    s.add_argument("--k", type=int, default=10)
    s.add_argument(
        "--mode",
        choices=["both", "text", "meaning"],
        default="both",
        help="text: the words written in the image (OCR, newest first); meaning: the embedding (highest cosine "
        "first); both (default): text hits first, then meaning hits",
    )
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(func=cmd_search)
