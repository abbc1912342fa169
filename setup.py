"""Build the compiled core; everything else is declared in pyproject.toml.

timefast/_core.pyx includes one file per concept (_core_*.pyx, _core_*.pxd) and the
C++ header _core_utxo.h: cythonize follows them all, so editing any of them rebuilds
the one extension, and pyproject.toml's package data ships them in sdists and wheels.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension(
                "timefast._core",
                ["timefast/_core.pyx"],
                language="c++",
                extra_compile_args=["-O2"],
            )
        ],
        compiler_directives={"language_level": "3"},
    ),
)
