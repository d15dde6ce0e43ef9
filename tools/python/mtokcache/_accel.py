"""Which implementation of the hot paths runs: the C extension `_native` (built from _native.c
by setup.py, optional) or the pure-Python code, which gives the same results everywhere.

MTOKCACHE_NATIVE=0 in the environment, or `use_native(False)`, selects the pure-Python code;
the default is the extension when it was built."""

import os

try:
    from . import _native as _built
except ImportError:  # not built: no compiler, or running from a source tree without build_ext
    _built = None

_on = _built is not None and os.environ.get("MTOKCACHE_NATIVE", "1") != "0"


def native():
    """The extension module while it is in use, else None."""
    return _built if _on else None


def built():
    """The extension module if it was built (whether in use or not), else None."""
    return _built


def use_native(on=True):
    """Selects the C extension (on=True; ValueError when it was not built) or the pure-Python
    code. Returns what was selected before."""
    global _on
    if on and _built is None:
        raise ValueError("mtokcache's C extension is not built (python setup.py build_ext --inplace in tools/python)")
    before, _on = _on, bool(on)
    return before
