"""Garrison detect engine: ingest, validate, evaluate, alarm."""
