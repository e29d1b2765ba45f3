"""The benchmark suite, beside the package (timm keeps its ``benchmark.py`` at the
repository root too): ``python benchmarks/NAME.py`` or ``emoray bench NAME`` from a
checkout. Each compares side by side in one run, prints a table, writes
``benchmarks/results/<name>.json`` and ends with ``<name>: ratio <r> (target <t>)``.
"""
