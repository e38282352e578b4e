"""The CUDA variant of the native extension compiles here (nvcc, no GPU) and loads.

Loading needs no GPU: the library links the CUDA runtime, which loads without a device.
The build is cached per user, so only a cold cache pays the compile (a few minutes on 2
cores); the CUDA kernels themselves run in bench/gpu_check.py on a lent GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from acuzoo.ops import native


@pytest.fixture(scope="module")
def cuda_build() -> str:
    if native.nvcc_path() is None:
        # CI must prove the build; elsewhere a machine without the toolchain may skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no nvcc / CUDA build of torch on this machine")
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    run = subprocess.run(
        [sys.executable, "-m", "acuzoo.ops.native", "--build", "--cuda"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.slow
def test_cuda_variant_loads_without_a_gpu(cuda_build):
    assert "variant:  cuda" in cuda_build.splitlines()


@pytest.mark.slow
def test_cuda_variant_registers_cpu_and_cuda_kernels_for_both_ops(cuda_build):
    lines = cuda_build.splitlines()
    for op in ("acuzoo::active_conv2d", "acuzoo::active_conv2d_backward"):
        (line,) = [row for row in lines if row.startswith(f"op {op}:")]
        assert {"CPU", "CUDA"} <= set(line.rsplit(": ", 1)[1].split(", ")), line
