"""Build the compiled core; everything else is declared in pyproject.toml."""

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
