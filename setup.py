"""Build hook for the optional C accelerator of the RTP relay (gateway/media/_fastrelay.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler
(or off Linux) the install still succeeds and the relay runs its pure-Python path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.media._fastrelay",
            ["gateway/media/_fastrelay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
