"""Builds the optional C accelerators: proxy/_speedups.c (hashes, RESP framing, fan-out kernels)
and proxy/_inflight.c (reply slots and queues).

Everything else is declared in pyproject.toml. If the compiler is missing the build goes on
without it and the pure-Python twins are used (same results, slower; python -m proxy.accel
says which run).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            name,
            [f"proxy/{name.split('.')[1]}.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        )
        for name in ("proxy._speedups", "proxy._inflight")
    ]
)
