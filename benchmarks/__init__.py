"""The benchmarks evaluate.py runs, one module each behind evaluate.BENCHMARKS (see evaluate.py)."""
