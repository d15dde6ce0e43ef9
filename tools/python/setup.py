"""The optional C extension mtokcache._native (the hot paths of reading and writing records; see
_native.c). `optional=True`: without a compiler or libzstd's headers the package installs
without it and runs its pure-Python code, which gives the same results.

In place, for running from the source tree (tools/install-deps.sh does this):
    python setup.py build_ext --inplace
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("mtokcache._native", ["mtokcache/_native.c"], libraries=["zstd"],
                             extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"],
                             optional=True)])
