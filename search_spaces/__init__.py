"""The search spaces shipped with autotune, installed as the package ``autotune.search_spaces``.

This file only makes the folder a package (pyproject.toml maps ``autotune.search_spaces`` to
this folder), so that ``importlib.resources`` finds the YAML files in an editable install and in
a wheel alike. The spaces themselves are the ``*.yaml`` files next to it.
"""
