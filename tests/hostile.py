"""Alias of ``benchmarks.hostile`` (it moved there: benchmarks never import tests, tests may import benchmarks)."""
import sys

from benchmarks import hostile as _module

sys.modules[__name__] = _module
