"""Measuring tools: ``scripts/benchmark.py`` (model timing and profile, memory, data pipeline: ``model``,
``memory``, ``data``, shared code in ``common``, the command line in ``cli``), ``roofline`` (the lower-bound step
time on a named GPU), ``bench_fast_ops`` (micro-benchmarks of the opt-in kernels), ``gpu_suite.sh`` and
``gpu_report`` (the GPU target table in one command). Import them as ``scripts.bench.<name>`` (``pip install -e .``
or the repository root on the path)."""
