"""Benchmarks (not tests): run with `.venv/bin/python -m bench.facilitator_bench`. See bench/README.md."""
