"""Alias of ``benchmarks.reliability_hooks`` (it moved there: benchmarks never import tests, tests may import benchmarks)."""
import sys

from benchmarks import reliability_hooks as _module

sys.modules[__name__] = _module
