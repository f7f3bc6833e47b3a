"""Builds the optional C accelerator for twemproxy's hash functions (proxy/_speedups.c).

Everything else is declared in pyproject.toml. If the compiler is missing the build goes on
without it and proxy/hashing.py uses its pure-Python functions (same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("proxy._speedups", ["proxy/_speedups.c"], optional=True, extra_compile_args=["-O2"])
    ]
)
