"""Builds the private extension sfu._native from the Cython sources in native/."""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SFU_DEBUG") == "1"

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
}

ext = Extension(
    "sfu._native",
    ["native/_native.pyx"],
    include_dirs=["native", numpy.get_include()],
    define_macros=[("SFU_DEBUG", "1" if DEBUG else "0"),
                   ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=["-O2", "-g0"] if not DEBUG else ["-O0", "-g"],
)

setup(ext_modules=cythonize([ext], compiler_directives=directives,
                            include_path=["native"], annotate=DEBUG))
