"""Benchmark-only user tasks: loaded as ``package.module:function``, never built-ins.

They exist so that the search-quality benchmark (``benchmarks.search_quality``) can measure
the search on a task that autotune was never tuned for: no shipped search space (the search
generates its default space from the baseline), no hand-written warm-start suggestions.
"""
