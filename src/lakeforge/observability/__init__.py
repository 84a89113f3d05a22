"""Structured run log, progress display, metrics."""
