"""Alias of ``benchmarks.reliability_kit`` (it moved there: benchmarks never import tests, tests may import benchmarks)."""
import sys

from benchmarks import reliability_kit as _module

sys.modules[__name__] = _module
