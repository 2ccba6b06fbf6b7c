"""Run the benchmark suite: `python -m bench.run [--quick] [--only enrichment,upload,scale,search] [--out bench/out]`
(optional, only when named: `--only gpu`, `--only upload_rtt`, `--only table`, `--only upload_metrics`).

Writes ``OUT/results.json`` (and ``OUT/results-quick.json`` with --quick). A full run (no --quick,
every benchmark) also records its sections in ``bench/results/suite.json`` and re-renders
``bench/RESULTS.md`` from every record there (bench/report.py): the other sections are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench.fixtures import machine, other_load

BENCHMARKS = ("enrichment", "upload", "scale", "search", "scaleout", "latency", "latency_workers")
OPTIONAL = (
    "gpu",
    "upload_rtt",
    "table",
    "upload_metrics",
)  # run only when named in --only; gpu is skipped where no CUDA device is visible;
# table: the Delta `assets` table (bench/table.py), 15-25 min in full mode

HERE = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer images, shorter loads, smaller tables (< 5 min)")
    p.add_argument(
        "--only", default=",".join(BENCHMARKS), help="comma-separated subset of: " + ", ".join(BENCHMARKS + OPTIONAL)
    )
    p.add_argument("--out", default=str(HERE / "out"))
    p.add_argument("--models-dir", help="reuse (or create) the random full-size models here instead of a temp folder")
    p.add_argument("--no-report", action="store_true", help="do not write bench/RESULTS.md")
    args = p.parse_args(argv)

    only = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHMARKS) - set(OPTIONAL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "background_load_cores_at_start": other_load(2.0),
        "benchmarks": {},
        "seconds": {},
    }
    log(
        f"bench: {results['mode']} run of {', '.join(only)} on {results['machine']['cpu']} "
        f"({results['machine']['cores']} cores); machine busy {results['background_load_cores_at_start']} cores before start"
    )
    t_all = time.perf_counter()
    failed = []
    for name in only:
        t = time.perf_counter()
        try:
            if name == "enrichment":
                from bench import enrichment

                results["benchmarks"][name] = enrichment.run(args.quick, models_dir=args.models_dir, log=log)
            elif name == "upload":
                from bench import upload

                results["benchmarks"][name] = upload.run(args.quick, log=log)
            elif name == "scale":
                from bench import scale

                results["benchmarks"][name] = scale.run(args.quick, log=log)
            elif name == "search":
                from bench import search

                results["benchmarks"][name] = search.run(args.quick, out_dir, log=log)
            elif name == "scaleout":
                from bench import scaleout

                results["benchmarks"][name] = scaleout.run(args.quick, log=log, models_dir=args.models_dir)
            elif name == "latency":
                from bench import latency

                results["benchmarks"][name] = latency.run(args.quick, log=log)
            elif name == "latency_workers":  # the same on the production instance and `dam worker`s
                from bench import latency

                results["benchmarks"][name] = latency.run_workers(args.quick, log=log)
            elif name == "upload_rtt":  # store ceiling, naive and `dam api` at 0, 10 and 20 ms round trips
                from bench import upload

                results["benchmarks"][name] = upload.run_rtt(args.quick, log=log)
                for line in upload.rtt_table(results["benchmarks"][name]):
                    log("upload_rtt: " + line)
            elif name == "upload_metrics":  # `dam api` upload rate with metrics on vs DAM_METRICS=0
                from bench import upload

                results["benchmarks"][name] = upload.run_metrics(args.quick, log=log)
            elif name == "table":  # Delta table writes, compaction, `dam sql` top-10 vs the legacy layout
                from bench import table

                results["benchmarks"][name] = table.run(args.quick, out_dir, log=log)
                for line in table.lines(results["benchmarks"][name]):
                    log("table: " + line)
            elif name == "gpu":
                from bench import gpu

                results["benchmarks"][name] = (
                    gpu.run(args.quick, models_dir=args.models_dir, log=log)
                    if gpu.cuda_visible()
                    else {"skipped": "no CUDA device"}
                )
        except Exception as err:
            failed.append(name)
            log(f"bench: {name} FAILED: {type(err).__name__}: {err}")
            results["benchmarks"][name] = {
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-3000:],
            }
        results["seconds"][name] = round(time.perf_counter() - t, 1)
        log(f"bench: {name} took {results['seconds'][name]:.0f}s")
    results["seconds"]["total"] = round(time.perf_counter() - t_all, 1)

    from bench.report import render, summary_lines, write_record

    name = "results-quick.json" if args.quick else "results.json"
    (out_dir / name).write_text(json.dumps(results, indent=1, default=str))
    log(f"bench: wrote {out_dir / name}")
    for line in summary_lines(results):
        print(line)
    search_results = results["benchmarks"].get("search")
    if search_results and "error" not in search_results:
        from bench.search import verdicts as search_verdicts

        for line in search_verdicts(search_results):
            print("search: " + line)
    if not args.quick and not args.no_report and set(only) == set(BENCHMARKS):
        levers_file = out_dir / "levers.json"
        levers = json.loads(levers_file.read_text()) if levers_file.exists() else None
        # includes section 4 (search) when it ran
        write_record("suite", render(results, levers), "python -m bench.run", date=results["machine"]["date"][:10])
        log(f"bench: wrote {HERE / 'results' / 'suite.json'} and {HERE / 'RESULTS.md'}")
    log(f"bench: total {results['seconds']['total']:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
