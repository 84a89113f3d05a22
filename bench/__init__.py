"""Lakeforge benchmarks: each runs the Lakeforge path and a hand-written baseline in the same
process on the same generated data and reports the ratio ``lakeforge / baseline``.

Run with ``python -m bench [--scale F] [--only NAME]``; results go to ``bench/results/``.
"""
