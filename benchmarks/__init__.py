"""``python -m benchmarks``: demo, side-by-side runs, JSONL records and tables."""
