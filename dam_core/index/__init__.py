"""The search index: versioned snapshots of the `assets` table with its vectors, kept up to date
batch by batch by the pipeline and loaded by the API, which swaps to a new version without a restart.

    index/segments/{segment}/...   immutable segment files (segments.py)
    index/versions/{seq}.json      the manifest of each version, created exclusively (manifest.py)
    index/CURRENT.json             a copy of the newest manifest, written last

Modules, each importing only those above it:
    manifest   the typed manifest (segments, removed ids, watermarks) and its compare-and-swap
               publish, pruning and removed-id rules
    segments   segment files: items, vectors, the HNSW graph and its tuning; one loaded segment's search
    resolve    which rows a list of segments serves (the `assets` view's rule, deletions)
    watermark  the low watermark: how far the batch manifests are known to be indexed
    snapshot   one loaded version: listing, lookup by id, vector search (the read side)
    holder     the API's live snapshot, swapped to each new version by polling
    write      full rebuild, one batch's segment, removals, tier merges (the write side)
The read side (snapshot, holder) and the write side never import each other.
"""
