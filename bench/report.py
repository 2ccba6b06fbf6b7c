"""bench/RESULTS.md, generated: one record per section in bench/results/, rendered in a fixed order.

Every figure of record is in RESULTS.md and nowhere else, and RESULTS.md is only ever written here,
from the records: `python -m bench.report` renders it without running anything. A benchmark that
runs writes its own record (`write_record`, or `write_section` with its Markdown) and re-renders the
file, so no run loses another's section. A measurement made by hand becomes a record too:
`python -m bench.report record NAME FILE.md --command ... --date ...`.

A record is JSON: `name`, `command`, `date`, `source` ("the benchmark" or "by hand") and `blocks`,
the section's Markdown as data: a string per paragraph, heading or code block, and per table
`{"columns": [...], "align": [...], "rows": [[...], ...]}` (cells as printed).

Also here: the console summary of a suite run and the Markdown of its sections (`render`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
RECORDS = HERE / "results"
# The order of the sections in RESULTS.md; records not named here follow, oldest first.
ORDER = (
    "suite",
    "scaleout",
    "latency",
    "gpu",
    "latency.workers",
    "issue13",
    "table",
    "runtimes",
    "e2e",
    "latency.model-server",
    "upload.metrics",
)


def _ok(met) -> str:
    return "met" if met else "**short**"


def _get(d, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _backends(u: dict) -> list[str]:
    return [k[len("api_") :] for k in u.get("runs", {}) if k.startswith("api_")]


def _noisy(*cpus) -> str:
    """A warning when other sessions took CPU during any of these measurements."""
    worst = max((c or {}).get("other_cores", 0.0) for c in cpus) if cpus else 0.0
    return f"  (NOISY: other sessions used up to {worst} cores meanwhile)" if worst > 0.2 else ""


def summary_lines(results: dict) -> list[str]:
    b = results.get("benchmarks", {})
    lines = [
        f"== dam-pipeline benchmarks ({results.get('mode')}) on {results['machine']['cpu']}, "
        f"{results['machine']['cores']} cores =="
    ]
    e = b.get("enrichment")
    if e and "error" not in e:
        lines.append(
            f"enrichment: batch {e['batch']['images_per_s']:.3f} img/s vs naive {e['naive']['images_per_s']:.3f} img/s "
            f"= {e['ratio']}x   [target >= 3x: {'met' if e['met'] else 'SHORT'}]  "
            f"(model-alone ceiling {e['batch']['ceiling']['images_per_s']:.3f} img/s = {e['ceiling_vs_naive']}x naive; "
            f"pipeline at {100 * e['pipeline_vs_ceiling']:.0f}% of it; peak RSS {e['batch']['peak_rss_mb']:.0f} vs "
            f"{e['naive']['peak_rss_mb']:.0f} MiB; with DAM_DTYPE=bfloat16: "
            f"{str(e.get('ratio_bf16')) + 'x' if e.get('ratio_bf16') else 'not run'})"
            + _noisy(e["batch"].get("cpu"), e["batch"]["ceiling"].get("cpu"), e["naive"].get("cpu"))
        )
    elif e:
        lines.append(f"enrichment: ERROR {e['error']}")
    u = b.get("upload")
    if u and "error" not in u:
        for backend in _backends(u):
            api, naive = _get(u, "runs", f"api_{backend}"), _get(u, "runs", f"naive_{backend}")
            if api and naive:
                lines.append(
                    f"upload ({backend}): api {api['requests_per_s']} req/s p50 {api['latency_ms']['p50']} ms "
                    f"p99 {api['latency_ms']['p99']} ms vs naive {naive['requests_per_s']} req/s p99 "
                    f"{naive['latency_ms']['p99']} ms = {u.get(f'ratio_{backend}')}x   "
                    f"[target >= 10x and p99 < 100 ms: {'met' if u.get(f'met_{backend}') else 'SHORT'}]"
                    + _noisy(api.get("cpu"), naive.get("cpu"))
                )
                if "big_upload" in api:
                    bu = api["big_upload"]
                    lines.append(
                        f"upload ({backend}): one 25 MiB upload -> {bu['status']}, API peak RSS delta {bu['delta_mb']} MiB"
                    )
        c = u.get("ceilings", {})
        if c:
            lines.append(
                f"upload ceilings: local store {c['store_local_1']['puts_per_s']} puts/s (16 threads "
                f"{c['store_local_16']['puts_per_s']}), S3/moto {c['store_s3_1']['puts_per_s']} (16 threads "
                f"{c['store_s3_16']['puts_per_s']}), broker {c['broker_confirmed_1conn']['publishes_per_s']} confirmed publishes/s"
            )
    elif u:
        lines.append(f"upload: ERROR {u['error']}")
    s = b.get("scale")
    if s and "error" not in s:
        tw = s["table_writes"]
        lines.append(
            f"scale (a): write_batch {tw['ours'][0]['ms']} ms at batch 1 -> {tw['ours'][-1]['ms']} ms at batch "
            f"{tw['batches']} ({tw['rows']:,} rows); naive rewrite {tw['naive'][0]['ms']} -> {tw['naive'][-1]['ms']} ms   "
            f"[target flat: {'met' if tw['met'] else 'SHORT'}]"
        )
        d = s["drain"]
        lines.append(
            f"scale (b): drain {d['messages_per_s']} msgs/s ({d['messages']:,} messages)   "
            f"[target >= 2,000: {'met' if d['met'] else 'SHORT'}]"
        )
        q = s["search"]
        lines.append(
            f"scale (c): top-10 over {q['rows']:,} rows: {q['assets']['total_ms']} ms (connect {q['assets']['connect_ms']} "
            f"+ query {q['assets']['query_ms']})   [target < 300 ms: {'met' if q['met'] else 'SHORT'}]"
        )
        ix = s.get("index_search")
        if ix and "search_ms" in ix:
            lines.append(
                f"scale (c'): product search index (dam_core.index): top-10 in {ix['search_ms']} ms over {ix['rows']:,} rows"
            )
    elif s:
        lines.append(f"scale: ERROR {s['error']}")
    for key in ("latency", "latency_workers"):  # upload-to-row latency (bench/latency.py)
        la = b.get(key)
        if la and "error" not in la:
            from bench.latency import lines as latency_lines

            lines.extend(latency_lines(la))
        elif la:
            lines.append(f"{key}: ERROR {la['error']}")
    t = b.get("table")  # the Delta `assets` table (bench/table.py)
    if t and "error" not in t:
        w = t["writes"]
        lines.append(
            f"table ({t['rows']:,} rows, compacted): top-10 recent {t['delta']['recent']['total_ms']} ms "
            f"(legacy layout {t['legacy']['recent']['total_ms']} ms), cosine {t['delta']['cosine']['total_ms']} ms "
            f"(legacy {t['legacy']['cosine']['total_ms']} ms)   [target < {t['delta']['recent']['target_ms']} ms: "
            f"recent {'met' if t['delta']['recent']['met'] else 'SHORT'}, cosine {'met' if t['delta']['cosine']['met'] else 'SHORT'}]; "
            f"write_batch median {w['windows'][0]['median_ms']} ms at batch 1 -> {w['windows'][-1]['median_ms']} ms at batch "
            f"{w['windows'][-1]['batch']:,}; compact {t['compaction']['seconds']} s, files {t['compaction']['files_before']:,} -> "
            f"{t['compaction']['files_after']:,}"
        )
    elif t:
        lines.append(f"table: ERROR {t['error']}")
    lines.append(f"total {results['seconds'].get('total')} s")
    return lines


def _cpu(c: dict | None) -> str:
    if not c:
        return ""
    parts = [f"machine {c['machine_busy_cores']}", f"bench {c['bench_cores']}"]
    if "broker_cores" in c:
        parts.append(f"RabbitMQ {c['broker_cores']}")
    parts.append(f"other {c['other_cores']}")
    return ", ".join(parts)


def search_section(results: dict) -> str:
    """Section 4 from bench.search (another benchmark in this suite), when it ran."""
    search = results.get("benchmarks", {}).get("search")
    if not search or "error" in search:
        return ""
    from bench.search import PREAMBLE, markdown

    return "## 4. Search (issue: finding images)\n\n" + PREAMBLE + "\n\n" + markdown(search) + "\n"


def render(results: dict, levers: dict | None = None) -> str:
    """The suite's sections (`python -m bench.run`, full): machine, headline, one section per benchmark."""
    m = results["machine"]
    b = results["benchmarks"]
    out: list[str] = []
    w = out.append
    w(f"## The suite: `python -m bench.run`, {m['date'][:10]}\n")
    w(
        "Every benchmark of the suite in one run: machine, headline, then enrichment, upload, scale, search and the "
        "levers (`python -m bench.levers`), each section below.\n"
    )
    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| CPU | {m['cpu']} |")
    w(f"| cores | {m['cores']} |")
    w(f"| RAM | {m['ram_gib']} GiB |")
    w(f"| Python | {m['python']} |")
    for k in ("torch", "transformers", "duckdb", "pyarrow", "fastapi", "uvicorn", "pika", "PIL"):
        if k in m:
            w(f"| {k} | {m[k]} |")
    w(f"| date | {m['date']} |")
    w(f"| machine busy before start (other sessions) | {results.get('background_load_cores_at_start')} cores |")
    w(f"| run time | {results['seconds'].get('total')} s |")
    w("")
    w(
        "Every figure below carries the CPU it ran with (cores busy on the whole machine, ours, RabbitMQ, other): "
        "this machine is shared with other sessions, so a figure measured while `other` was high is pessimistic.\n"
    )

    w("## Headline\n")
    w("| benchmark | this pipeline | naive | ratio | target | |")
    w("|---|---|---|---|---|---|")
    e = b.get("enrichment", {})
    if e and "error" not in e:
        w(
            f"| enrichment, fp32 (like for like) | {e['batch']['images_per_s']:.3f} images/s | {e['naive']['images_per_s']:.3f} images/s | "
            f"{e['ratio']}x | >= 3x | {_ok(e['met'])} |"
        )
        bf = e.get("batch_bf16") or {}
        if "images_per_s" in bf:
            auto = e.get("dam_dtype_auto_on_this_cpu")
            label = "`DAM_DTYPE=auto` (= bf16 on this CPU)" if auto == "bf16" else "`DAM_DTYPE=bfloat16`"
            w(
                f"| enrichment, {label} | {bf['images_per_s']:.3f} images/s | {e['naive']['images_per_s']:.3f} images/s (fp32) | "
                f"{e['ratio_bf16']}x | >= 3x | {_ok(e['ratio_bf16'] >= 3)} |"
            )
    u = b.get("upload", {})
    if u and "error" not in u:
        for backend in _backends(u):
            api, naive = _get(u, "runs", f"api_{backend}"), _get(u, "runs", f"naive_{backend}")
            if api and naive:
                w(
                    f"| upload, {backend.replace('_rtt', ', RTT ')} store | {api['requests_per_s']} req/s, p99 {api['latency_ms']['p99']} ms | "
                    f"{naive['requests_per_s']} req/s, p99 {naive['latency_ms']['p99']} ms | {u.get(f'ratio_{backend}')}x | "
                    f">= 10x, p99 < 100 ms | {_ok(u.get(f'met_{backend}'))} |"
                )
    s = b.get("scale", {})
    if s and "error" not in s:
        tw = s["table_writes"]
        w(
            f"| table write, batch 1 -> {tw['batches']:,} | {tw['ours'][0]['ms']} -> {tw['ours'][-1]['ms']} ms | "
            f"{tw['naive'][0]['ms']} -> {tw['naive'][-1]['ms']} ms | {tw['ours_first_last_ratio']}x vs "
            f"{tw['naive_first_last_ratio']}x growth | flat | {_ok(tw['met'])} |"
        )
        d = s["drain"]
        w(f"| sensor drain | {d['messages_per_s']:,} msgs/s | | | >= 2,000 msgs/s | {_ok(d['met'])} |")
        q = s["search"]
        w(f"| `dam sql` top-10, {q['rows']:,} rows | {q['assets']['total_ms']} ms | | | < 300 ms | {_ok(q['met'])} |")
    w("")

    if e and "error" not in e:
        bt, nv, ce = e["batch"], e["naive"], e["batch"]["ceiling"]
        w("## 1. Enrichment\n")
        w(
            f"{e['images']['jpeg_1600x1200']} photo-like JPEGs of 1600x1200 and {e['images']['png_1024x768']} PNGs of "
            f"1024x768; BLIP-base captioning (ViT-B/16 at 384 px, bert-base decoder) and CLIP ViT-B/32, full size, random "
            f"weights, loaded with `from_pretrained`; captions forced to exactly {e['caption_tokens']} new tokens on both "
            f"sides (words per caption seen, `##` word pieces joined: batch {bt['caption_words']}, naive {nv['caption_words']}). Each side in its "
            f"own process, after one warm-up image. torch threads {bt['torch_threads']} (interop {bt['torch_interop_threads']}), "
            f"batch side fp32 (`DAM_DTYPE=float32`, named explicitly; `auto` resolves to "
            f"{e.get('dam_dtype_auto_on_this_cpu', '?')} on this CPU), naive side fp32 (plain `from_pretrained`).\n"
        )
        w("| side | images/s | s/image | CPU s/image | peak RSS | CPU during run (cores) |")
        w("|---|---|---|---|---|---|")
        w(
            f"| batch path, fp32 (decode_batch + caption + embed_images + writes) | {bt['images_per_s']:.3f} | "
            f"{1 / bt['images_per_s']:.2f} | {bt.get('cpu_s_per_image', '')} | {bt['peak_rss_mb']:.0f} MiB | {_cpu(bt['cpu'])} |"
        )
        w(
            f"| naive per-image worker | {nv['images_per_s']:.3f} | {1 / nv['images_per_s']:.2f} | "
            f"{nv.get('cpu_s_per_image', '')} | {nv['peak_rss_mb']:.0f} MiB | {_cpu(nv['cpu'])} |"
        )
        bf = e.get("batch_bf16") or {}
        if "images_per_s" in bf:
            w(
                f"| batch path, `DAM_DTYPE=bfloat16` | {bf['images_per_s']:.3f} | "
                f"{1 / bf['images_per_s']:.2f} | {bf.get('cpu_s_per_image', '')} | {bf['peak_rss_mb']:.0f} MiB | {_cpu(bf['cpu'])} |"
            )
        w(
            f"| ceiling: models alone on ready tensors (caption batch {ce['caption_batch']}, embed batch "
            f"{ce['embed_batch']}) | {ce['images_per_s']:.3f} | {1 / ce['images_per_s']:.2f} | | | {_cpu(ce['cpu'])} |"
        )
        w("")
        for name, side in (("batch path", bt), ("naive worker", nv)):
            if len(side.get("attempts", [])) > 1:
                w(
                    f"The {name} was measured {len(side['attempts'])} times because other sessions were using the CPU; "
                    f"kept the quietest: "
                    + ", ".join(
                        f"{a['images_per_s']:.3f} images/s with {a['other_cores']} other cores"
                        for a in side["attempts"]
                    )
                    + ".\n"
                )
        st = bt["stages_s"]
        tot = sum(st.values()) or 1
        w(
            "Batch path stages: "
            + ", ".join(f"{k} {v:.2f} s ({100 * v / tot:.0f}%)" for k, v in st.items())
            + f". Ceiling: BLIP generate {ce['caption_s']:.2f} s, CLIP {ce['embed_s']:.2f} s.\n"
        )
        w(
            f"Ratio batch/naive **{e['ratio']}x**; the pipeline runs at **{100 * e['pipeline_vs_ceiling']:.0f}%** of "
            f"the model-alone ceiling, and the ceiling itself is only **{e['ceiling_vs_naive']}x** the naive worker. "
            f"With `DAM_DTYPE=bfloat16` the batch path is **{e.get('ratio_bf16')}x** the (fp32) naive worker.\n"
        )

    if u and "error" not in u:
        w("## 2. Upload\n")
        w(
            f"{u['concurrency']} concurrent clients (asyncio + httpx in their own process) posting ~{u['image_bytes_mean'] // 1000} KB "
            f"JPEGs, each body unique (new id, new object, new message), for {u['duration_s']:g} s after a warm-up; real "
            f"RabbitMQ with a unique queue per run (deleted afterwards); servers in their own process, uvicorn, "
            f"`--log-level warning` on both sides. S3 runs use moto's ThreadedMotoServer in its own process "
            f"(R2_REGION=us-east-1).\n"
        )
        w(
            "| server | store | req/s | p50 ms | p90 ms | p99 ms | max ms | non-202 | server peak RSS | CPU during run (cores) |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|")
        for r in u["runs"].values():
            lat = r["latency_ms"]
            bad = {k: v for k, v in r["statuses"].items() if k != "202"}
            store = r["backend"] + (f", {r['rtt_ms']:g} ms RTT to broker and store" if r.get("rtt_ms") else "")
            w(
                f"| {'`dam api`' if r['server'] == 'api' else 'naive producer'} | {store} | {r['requests_per_s']} | "
                f"{lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} | {bad or 0} | {r['server_peak_rss_mb']:.0f} MiB | "
                f"{_cpu(r.get('cpu'))} |"
            )
        w("")
        c = u.get("ceilings", {})
        if c:
            w("Ceilings (same machine, same run):\n")
            w("| ceiling | rate |")
            w("|---|---|")
            w(
                f"| local store alone, `LocalStore.create` of ~200 KB (fsync), 1 thread | {c['store_local_1']['puts_per_s']} puts/s |"
            )
            w(f"| local store alone, 16 threads | {c['store_local_16']['puts_per_s']} puts/s |")
            w(f"| S3 store alone (moto), `S3Store.create`, 1 thread | {c['store_s3_1']['puts_per_s']} puts/s |")
            w(f"| S3 store alone (moto), 16 threads | {c['store_s3_16']['puts_per_s']} puts/s |")
            br = c["broker_confirmed_1conn"]
            w(
                f"| broker alone, `RabbitQueue.publish` (persistent, confirmed) on one connection | {br['publishes_per_s']} "
                f"publishes/s (p50 {br['latency_ms_p50']} ms, p99 {br['latency_ms_p99']} ms) |"
            )
            w("")
        for backend in ("local", "s3"):
            api = _get(u, "runs", f"api_{backend}")
            if api and "big_upload" in api:
                bu = api["big_upload"]
                w(
                    f"One {bu['bytes'] / 1048576:.1f} MiB JPEG to `dam api` ({backend} store), after the load run: "
                    f"{bu['status']} in {bu['seconds']} s; server peak RSS {bu['peak_rss_before_mb']:.1f} -> "
                    f"{bu['peak_rss_after_mb']:.1f} MiB (**delta {bu['delta_mb']} MiB**).\n"
                )

    if s and "error" not in s:
        tw = s["table_writes"]
        w("## 3. Scale\n")
        w(f"### (a) Table writes as the table grows to {tw['rows']:,} rows\n")
        w(
            "64-row batches with 512-float embeddings into a LocalStore. This pipeline: `dam_core.table.write_batch`, one "
            "file per batch, every batch timed (median of a window around each point). Naive: read the one "
            "`metadata/assets.parquet`, append 64 rows, rewrite it (timed at each point on a file of that size).\n"
        )
        w("| batch k | rows before | write_batch ms | naive rewrite ms |")
        w("|---|---|---|---|")
        for o, n in zip(tw["ours"], tw["naive"], strict=False):
            w(f"| {o['batch']:,} | {o['rows_before']:,} | {o['ms']} | {n['ms']} |")
        w("")
        w(
            f"write_batch: median {tw['ours_median_ms']} ms, p99 {tw['ours_p99_ms']} ms over all {tw['batches']:,} batches; "
            f"{tw['ours_total_s']} s to write the whole table. Naive: estimated {tw['naive_total_s_estimated']:,} s to "
            f"reach the same size (its per-batch cost interpolated over every batch).\n"
        )
        d = s["drain"]
        w("### (b) Sensor drain rate\n")
        w(
            f"{d['published']:,} valid UploadMessage JSONs published to a unique RabbitMQ queue, then "
            f"`dam_assets.ingest.draining.drain(queue, LocalStore, batch_size=64, budget_seconds=20)` called until it returns "
            f"nothing (as successive sensor ticks): **{d['messages_per_s']:,} msgs/s** ({d['messages']:,} messages, "
            f"{d['batches']} manifests, {d['ticks']} drain calls, {d['seconds']} s including each call's 0.25 s "
            f"empty-queue wait; best call {d['best_tick_per_s']:,} msgs/s).\n"
        )
        q = s["search"]
        w("### (c) `dam sql` top-10 cosine similarity\n")
        w(
            f"{q['rows']:,} rows in {tw['batches']:,} batch files; a new `dam_core.table.AssetTable.connect()` per run, then "
            f"`{q['sql']}` (`embedding` is read back as `FLOAT[]`, hence the cast). Median of {q['runs']} runs.\n"
        )
        w("| view | connect ms | query ms | total ms | runs (total ms) |")
        w("|---|---|---|---|---|")
        for view in ("assets", "assets_all"):
            v = q[view]
            w(f"| `{view}` | {v['connect_ms']} | {v['query_ms']} | {v['total_ms']} | {v['total_ms_all']} |")
        variants = [q[k] for k in ("assets_variant", "assets_variant_antijoin") if k in q]
        for av in variants:
            w(
                f"| `assets`, variant: {av['what']} | {av['connect_ms']} | {av['query_ms']} | {av['total_ms']} | "
                f"{av['total_ms_all']} |"
            )
        w("")
        if variants:
            w(
                "The variants are not product code: they measure changes proposed for `dam_core/table.py` "
                f"(same top-10 as the product view: {', '.join(str(v['same_top10_as_product']) for v in variants)}).\n"
            )
        ix = s.get("index_search")
        if ix and "search_ms" in ix:
            w(
                f"For reference, the product's search index (`dam_core.index`, what the API's search uses): built from "
                f"the same table in {ix['build_s']} s, loaded in {ix['load_s']} s, then top-10 in **{ix['search_ms']} ms** "
                f"(median of 20 queries, {ix['rows']:,} rows).\n"
            )
        elif ix:
            w(f"Product search index: not measured ({ix.get('error')}).\n")

    section4 = search_section(results)
    if section4:
        w(section4)
    if levers:
        w("## Levers measured\n")
        w(levers.get("markdown", ""))
        w("")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- records -> RESULTS.md


_ROW = re.compile(r"(?<!\\)\|")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in _ROW.split(line.strip())[1:-1]]


def _table_line(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _table(lines: list[str]):
    """A Markdown table as data, or its text when it would not print back exactly as it was."""
    if len(lines) >= 2 and re.fullmatch(r"\|(:?-+:?\|)+", lines[1].strip()):
        table = {
            "columns": _cells(lines[0]),
            "align": lines[1].strip().strip("|").split("|"),
            "rows": [_cells(x) for x in lines[2:]],
        }
        if render_block(table) == "\n".join(lines):
            return table
    return "\n".join(lines)


def to_blocks(markdown: str) -> list:
    """Markdown -> blocks: paragraphs, headings and code blocks as strings, tables as data."""
    lines, blocks, i = markdown.strip("\n").split("\n"), [], 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        j = i + 1
        if lines[i].startswith(("```", "    ")):
            if lines[i].startswith("```"):  # fenced: to the closing fence, blank lines and all
                while j < len(lines) and not lines[j].startswith("```"):
                    j += 1
                j += 1
            else:  # indented code: to the first line that is not indented
                while j < len(lines) and lines[j].startswith("    "):
                    j += 1
            blocks.append("\n".join(lines[i:j]))
        elif lines[i].startswith("|"):
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]))
        elif lines[i].startswith("#"):
            blocks.append(lines[i])
        else:
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("|", "```", "#")):
                j += 1
            blocks.append("\n".join(lines[i:j]))
        i = j
    return blocks


def render_block(block) -> str:
    if isinstance(block, str):
        return block
    return "\n".join(
        [_table_line(block["columns"]), "|" + "|".join(block["align"]) + "|"] + [_table_line(r) for r in block["rows"]]
    )


def render_record(record: dict) -> str:
    return "\n\n".join(render_block(b) for b in record["blocks"]) + "\n"


def _title(record: dict) -> str:
    if record.get("title"):
        return record["title"]
    heading = next((b for b in record["blocks"] if isinstance(b, str) and b.startswith("## ")), record["name"])
    return heading.lstrip("# ").strip()


def load_records(folder: Path = RECORDS) -> list[dict]:
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    named = [records.pop(n) for n in ORDER if n in records]
    return named + sorted(records.values(), key=lambda r: (r.get("date", ""), r["name"]))


def render_results(records: list[dict]) -> str:
    """The whole of RESULTS.md."""
    head = [
        "# dam-pipeline benchmark results",
        "Generated by `python -m bench.report` from the records in `bench/results/`, one per section: a "
        "benchmark writes its own record when it runs, and a measurement made by hand is recorded with "
        "`python -m bench.report record`. Do not edit this file; edit or add a record. How to run each "
        "benchmark: [docs/benchmarks.md](../docs/benchmarks.md); what was tried, and why: [NOTES.md](NOTES.md).",
        "| section | measured | command | recorded |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {_title(r)} | {r.get('date', '')} | `{r.get('command', '')}` | {r.get('source', '')} |" for r in records
        ),
    ]
    return "\n\n".join(head) + "\n\n" + "\n".join(render_record(r) for r in records)


def write_results_file(folder: Path = RECORDS, target: Path = RESULTS) -> Path:
    target.write_text(render_results(load_records(folder)))
    return target


_SCALAR = r'(?:"(?:[^"\\]|\\.)*"|-?[\d.eE+]+|null|true|false)'
_FLAT_LIST = re.compile(r"\[\s*\n\s*(" + _SCALAR + r"(?:,\s*\n\s*" + _SCALAR + r")*)\s*\n\s*\]")


def dump_record(record: dict) -> str:
    """JSON with one line per table row (a list of cells), for readable diffs."""
    text = json.dumps(record, indent=1, ensure_ascii=False)
    return _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]", text) + "\n"


def write_record(
    name: str,
    markdown: str,
    command: str,
    date: str | None = None,
    source: str = "the benchmark",
    folder: Path = RECORDS,
    **extra,
) -> Path:
    """Record one section (replacing the record of that name) and re-render RESULTS.md from every record."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": command,
        "date": date or time.strftime("%Y-%m-%d"),
        "source": source,
        **extra,
        "blocks": to_blocks(markdown),
    }
    (folder / f"{name}.json").write_text(dump_record(record))
    return write_results_file(folder)


def write_section(name: str, markdown: str, command: str | None = None) -> Path:
    """A benchmark's own section of RESULTS.md (`python -m bench.<name>`), as its record."""
    return write_record(name, markdown, command or f"python -m bench.{name.split('.')[0]}")


def standalone(argv, prog: str, doc: str, run, name: str, render) -> int:
    """The command line of a benchmark run on its own (`python -m bench.<name>`): --quick, --models-dir,
    --out (OUT/<name>.json), and its own record (section of RESULTS.md) unless --no-report."""
    import argparse
    import os
    import sys

    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models-dir", help="reuse (or create) the random full-size models here")
    p.add_argument("--out", default=str(HERE / "out"))
    p.add_argument("--no-report", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(args.quick, args.models_dir, log=lambda m: print(m, file=sys.stderr, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    markdown = render(result)
    print(markdown)
    if not args.no_report:
        write_section(name, markdown, command=prog + (" --quick" if args.quick else ""))
    return 0


def main(argv=None) -> int:
    """`python -m bench.report`: render bench/RESULTS.md from bench/results/ (runs nothing)."""
    import argparse
    import time

    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("--check", action="store_true", help="exit 1 when RESULTS.md is not what the records render")
    p.add_argument("--from-out", metavar="OUT", help="first record the suite from OUT/results.json (+ OUT/levers.json)")
    sub = p.add_subparsers(dest="action")
    r = sub.add_parser("record", help="record a section measured by hand (Markdown, its own '## ' heading first)")
    r.add_argument("name")
    r.add_argument("markdown_file")
    r.add_argument("--command", required=True, help="what was run, as a reader would run it again")
    r.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = p.parse_args(argv)
    if args.action == "record":
        target = write_record(
            args.name, Path(args.markdown_file).read_text(), args.command, args.date, source="by hand"
        )
        print(f"recorded {RECORDS / (args.name + '.json')}; wrote {target}")
        return 0
    if args.from_out:
        out = Path(args.from_out)
        results = json.loads((out / "results.json").read_text())
        levers = json.loads((out / "levers.json").read_text()) if (out / "levers.json").exists() else None
        write_record("suite", render(results, levers), "python -m bench.run", date=results["machine"]["date"][:10])
    wanted = render_results(load_records())
    if args.check:
        if not RESULTS.exists() or RESULTS.read_text() != wanted:
            print(f"{RESULTS} is not what bench/results/ renders: run python -m bench.report")
            return 1
        return 0
    RESULTS.write_text(wanted)
    print(f"wrote {RESULTS} from {len(load_records())} records in {RECORDS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
