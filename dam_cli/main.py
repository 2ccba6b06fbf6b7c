"""The `dam` command: serve the API, run the whole pipeline, upload files, query with SQL."""

from __future__ import annotations

import argparse
import os
import sys

from dam_cli import api, delete, dev, models, search, sql, table, upload, worker

COMMANDS = (api, dev, upload, delete, sql, table, search, models, worker)  # in the order `dam --help` lists them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dam", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe must surface here, not in the interpreter's exit flush
    except BrokenPipeError:
        # The reader left early (`dam sql ... | head`): stop quietly like coreutils, whose
        # SIGPIPE death the shell reports as 128 + 13. Python would otherwise try to flush
        # stdout again at exit and print a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
