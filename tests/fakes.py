"""Alias of ``benchmarks.fakes`` (it moved there: benchmarks never import tests, tests may import benchmarks)."""
import sys

from benchmarks import fakes as _module

sys.modules[__name__] = _module
