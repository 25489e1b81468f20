"""Bulk embedding of files: readers, durable progress, scheduling, writers (the instructor-embed CLI)."""
