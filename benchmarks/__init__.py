"""occoord's benchmarks: plain scripts, run all with ``python -m benchmarks`` (see run.py)."""
