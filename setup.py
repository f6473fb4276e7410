"""The optional C extension gateway_pkg._native (everything else is in pyproject.toml).

The extension uses only the limited API of Python 3.11 (Py_LIMITED_API 0x030B0000), so the
wheel is tagged cp311-abi3 and serves every CPython from 3.11 on. It is optional: without a
C compiler or the Python headers the build still succeeds (setuptools warns "building
extension ... failed"), the wheel is then a pure one (py3-none-any) and the package runs its
pure-Python checksums (docs/dataplane.md#the-native-checksum). FIREZONE_BUILD_NATIVE=0 skips
the extension on purpose: a pure wheel too.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = os.environ.get("FIREZONE_BUILD_NATIVE", "1").strip().lower() not in ("0", "off", "false", "no")


class OptionalBuildExt(build_ext):
    """build_ext that turns the wheel pure when the optional extension could not be built, so
    a cp311-abi3-<platform> wheel always carries gateway_pkg._native."""

    def run(self) -> None:
        super().run()
        missing = [e.name for e in self.extensions if not os.path.exists(self.get_ext_fullpath(e.name))]
        if missing:
            print(f"firezone-gateway-py: {', '.join(missing)} not built (no C compiler or Python headers?): "
                  "the pure-Python checksums will run", file=sys.stderr)
            self.distribution.ext_modules = []
            wheel = self.distribution.command_obj.get("bdist_wheel")
            if wheel is not None:
                wheel.root_is_pure = True
                wheel.py_limited_api = False


ext_modules = []
options = {}
if NATIVE:
    ext_modules.append(
        Extension(
            "gateway_pkg._native",
            sources=["gateway_pkg/_native.c"],
            py_limited_api=True,
            define_macros=[("Py_LIMITED_API", "0x030B0000")],
            optional=True,
        )
    )
    options["bdist_wheel"] = {"py_limited_api": "cp311"}

setup(ext_modules=ext_modules, options=options, cmdclass={"build_ext": OptionalBuildExt})
