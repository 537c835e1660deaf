"""Benchmarks: seeded, in process, no Kafka. `make bench-decisions` runs bench.decisions."""
