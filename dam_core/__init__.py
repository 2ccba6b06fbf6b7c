"""Shared core of dam-pipeline: settings, object store, queue and message schema.

Imported by both the ingest API and the Dagster code location; nothing here imports
dagster or torch, so the API stays light.
"""
