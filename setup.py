"""Build hook for the optional C accelerators: the RTP relay's common case
(gateway/media/_fastrelay.c) and the masker bank's quiet step (dtmf/_maskstep.c).

Everything else is in pyproject.toml. The extensions are optional: without a C compiler
(or off Linux) the install still succeeds and the relay and masker run their Python paths.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.media._fastrelay",
            ["gateway/media/_fastrelay.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "dtmf._maskstep",
            ["dtmf/_maskstep.c"],
            # No fused multiply-add (each product and sum rounds on its own, on every machine);
            # the block features step two accumulators at a time, which reorders no sum.
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
                                "-ffp-contract=off"],
            optional=True,
        ),
    ]
)
