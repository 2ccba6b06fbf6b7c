"""Filenames (captions, errors) are data in the Markdown previews of Dagster's UI: escaped, never markup."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from dagster import AssetKey

from dam_assets.markdown import md_table, md_text
from dam_assets_tests.conftest import jpeg_bytes
from dam_assets_tests.pipeline_harness import run_pending
from dam_core.messages import UploadMessage
from dam_core.queue import make_queue
from dam_core.store import make_store

HOSTILE = "a|b\n<img src=x onerror=alert(1)>[x](javascript:1).jpg"


def cells(row: str) -> list[str]:
    """A GFM table row split as GFM does: a backslash escapes the next character, `\\|` is no border."""
    assert row.startswith("|") and row.endswith("|"), row
    out, cell, i = [], "", 1
    while i < len(row) - 1:
        if row[i] == "\\":
            cell += row[i : i + 2]
            i += 2
            continue
        if row[i] == "|":
            out.append(cell)
            cell = ""
        else:
            cell += row[i]
        i += 1
    assert i == len(row) - 1, f"the closing pipe is escaped: {row!r}"
    return out + [cell]


def assert_table(md: str, columns: int, rows: int) -> None:
    lines = md.split("\n")
    assert len(lines) == 2 + rows, md
    assert all(len(cells(line)) == columns for line in lines), md
    assert set(lines[1]) <= {"|", "-"}
    assert_inert(md)


def assert_inert(md: str) -> None:
    """No raw HTML, and no link, image or code syntax made of data."""
    assert "<" not in md and ">" not in md, md
    assert "](" not in md and "[x]" not in md and "`" not in md.replace("\\`", ""), md


def unescape(text: str) -> str:
    """What a CommonMark renderer shows for md_text's output."""
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out += text[i + 1]
            i += 2
        else:
            out += text[i]
            i += 1
    return out.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("plain name.jpg", "plain name.jpg"),
        ("a|b.jpg", "a|b.jpg"),
        ("back\\slash|pipe", "back\\slash|pipe"),
        ("two\nlines\r\nthree\u2028four\tfive", "two lines three four five"),
        ("<img src=x onerror=alert(1)>", "<img src=x onerror=alert(1)>"),
        ("[x](javascript:1) ![i](http://e/x.png)", "[x](javascript:1) ![i](http://e/x.png)"),
        ("*bold* _it_ `code` ~~s~~ # h &amp; &lt;", "*bold* _it_ `code` ~~s~~ # h &amp; &lt;"),
        ("ünïcødé 写真.jpg", "ünïcødé 写真.jpg"),
        (None, ""),
    ],
)
def test_md_text_renders_as_the_text_itself(raw, shown):
    md = md_text(raw)
    assert "\n" not in md and "\r" not in md
    assert_inert(md)
    for ch in "|*_[]()!#~":  # every one of these is escaped: it is text, not syntax
        assert md.count(ch) == md.count("\\" + ch), (ch, md)
    assert unescape(md) == shown


def test_md_text_limit_cuts_before_escaping():
    md = md_text("|" * 100, limit=5)
    assert md == "\\|" * 5 + "…"


def test_md_table_keeps_every_row_to_the_header_columns():
    md = md_table(["a", "b|c", "d"], [[HOSTILE, None, "x\\"], ["only one"], [1, 2, 3, 4]])
    assert_table(md, columns=3, rows=3)
    header, _, first, short, long_ = md.split("\n")
    assert [unescape(c.strip()) for c in cells(header)] == ["a", "b|c", "d"]
    assert unescape(cells(first)[0].strip()) == HOSTILE.replace("\n", " ")
    assert unescape(cells(first)[2].strip()) == "x\\"
    assert [c.strip() for c in cells(short)] == ["only one", "", ""]
    assert [c.strip() for c in cells(long_)] == ["1", "2", "3"]


def test_materialized_previews_of_a_batch_with_a_hostile_filename(make_settings, tiny_models, instance):
    """The real pipeline (sensor, then the batch's assets with the tiny models): every preview of a
    batch holding a hostile filename is a well-formed table, or list, with nothing raw in it."""
    env = make_settings(**tiny_models, DAM_BATCH_SIZE="8")
    store, queue = make_store(env), make_queue(env)
    names = [HOSTILE, "plain.jpg", "x\\|y||z.jpg"]
    for n, name in enumerate(names):
        data = jpeg_bytes(64, 48, seed=n)
        asset_id = f"{n + 10:032x}"
        store.put(f"assets/{asset_id}.jpg", data)
        # Straight onto the queue: the API's clean_filename would already drop the line break.
        queue.publish(
            UploadMessage(
                id=asset_id,
                filename=name,
                r2_key=f"assets/{asset_id}.jpg",
                mime_type="image/jpeg",
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                width=64,
                height=48,
                uploaded_at=datetime.now(UTC),
            ).to_json()
        )
    (batch,), _ = run_pending(instance)

    def metadata(key: str) -> dict:
        event = instance.get_latest_materialization_event(AssetKey(key))
        assert event.asset_materialization.partition == batch
        return event.asset_materialization.metadata

    manifest_md = metadata("upload_batch")["preview"].value
    assert_table(manifest_md, columns=4, rows=3)
    filenames = [unescape(cells(line)[1].strip()) for line in manifest_md.split("\n")[2:]]
    assert sorted(filenames) == sorted(n.replace("\n", " ") for n in names)

    rows_md = metadata("asset_metadata")["preview"].value
    assert_table(rows_md, columns=3, rows=3)

    captions_md = metadata("image_captions")["sample_captions"].value
    lines = captions_md.split("\n")
    assert len(lines) == 3 and all(line.startswith("- **") for line in lines), captions_md
    assert_inert(captions_md)
