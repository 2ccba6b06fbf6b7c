"""The enrichment stages, one module each, in the order a batch meets them: decode, captions,
embeddings (with tags), thumbnails, exif; each computes its output and writes it."""
