"""The bundled native extension: C++ (CPU) and CUDA kernels of the ACU (acuzoo/ops/csrc).

Nothing is compiled at ``import acuzoo``. A wheel carries the C++ (CPU) library prebuilt
(``native_prebuilt``): it is loaded on first use where it matches the running torch, Python,
sources and CPU. Otherwise the extension is built on first use, just in time (announced in the
log, with ninja's progress), with ``torch.utils.cpp_extension.load`` and cached under
``~/.cache/acuzoo/native/<name>`` (``$ACUZOO_CACHE_DIR`` overrides the root), the name
keyed by a hash of the sources, the compiler flags, the torch and Python versions: a
second process, or a second test session, loads the cached library in a second.

Build ahead of time (one command; also what CI runs)::

    python -m acuzoo.ops.native --build            # CUDA kernels too if nvcc and a GPU are found
    python -m acuzoo.ops.native --build --cpu-only # C++ kernels only, no nvcc needed
    python -m acuzoo.ops.native --build --cuda     # insist on the CUDA kernels

Variants: ``cuda`` (C++ and CUDA kernels; needs nvcc and a CUDA build of torch, but no
GPU, neither to build nor to load) and ``cpu`` (C++ kernels only). One process loads one
variant, the first one asked for; the default is ``cuda`` where nvcc and a GPU are
found, else ``cpu``. A machine without a compiler, without nvcc (for CUDA tensors) or where the build
fails gets ``native_available(...) == False`` and one log line saying why; the PyTorch
paths of the operator then serve.

Environment: ``ACUZOO_NATIVE=0`` turns the extension off; ``ACUZOO_NATIVE_VARIANT=cpu|cuda``
picks the variant; ``ACUZOO_CUDA_ARCH`` sets ``TORCH_CUDA_ARCH_LIST`` for the build (default
``9.0``: H100/H200, as no GPU may be there to detect); ``MAX_JOBS`` bounds the parallel
compile jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
_CPU_SOURCES = (
    "ops.cpp",
    "autograd.cpp",
    "common/driver.cpp",
    "cpu/registration.cpp",
    "cpu/depthwise_planes.cpp",
    "cpu/depthwise_blocks.cpp",
    "cpu/merged_conv.cpp",
    "cpu/grouped_tiles.cpp",
    "cpu/columns.cpp",
    "cpu/twin.cpp",
)
_CUDA_SOURCES = ("cuda/kernels.cu",)
_HEADERS = (
    "common/columns.h",
    "common/depthwise.h",
    "common/driver.h",
    "common/geometry.h",
    "common/math.h",
    "cpu/depthwise_blocks_in_place.h",
    "cpu/kernels.h",
    "cpu/planes.h",
    "cpu/reduce_rows.h",
    "cpu/taps.h",
)
VARIANTS = ("cpu", "cuda")
DEFAULT_CUDA_ARCH = "9.0"

_lock = threading.Lock()
_loaded: str | None = None  # the variant loaded in this process
_origin: Path | None = None  # the library file it came from
_failed: dict[str, str] = {}  # variant -> why it could not be built or loaded
_warned: set[str] = set()


def cache_root() -> Path:
    """Where built libraries are kept (per user)."""
    root = os.environ.get("ACUZOO_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "acuzoo" / "native"


def _cuda_home() -> str | None:
    """The CUDA toolkit torch's extension builder will use, corrected where it guessed wrong.

    Without CUDA_HOME, torch takes the folder above the first ``nvcc`` on PATH; a wrapper
    script such as /usr/local/bin/nvcc then yields /usr/local, which has no CUDA headers.
    Where that happens and /usr/local/cuda is a toolkit, use it.
    """
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    if home and not Path(home, "include", "cuda_runtime.h").exists():
        fallback = Path("/usr/local/cuda")
        if not os.environ.get("CUDA_HOME") and (fallback / "include" / "cuda_runtime.h").exists():
            home = str(fallback)
            cpp_extension.CUDA_HOME = home
    return home


def nvcc_path() -> str | None:
    """nvcc of the CUDA toolkit (CUDA_HOME, as torch's extension builder finds it), or None."""
    if torch.version.cuda is None:
        return None
    home = _cuda_home()
    candidate = Path(home, "bin", "nvcc") if home else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    return None


def default_variant() -> str:
    """``$ACUZOO_NATIVE_VARIANT``, else ``cuda`` where nvcc and a GPU are found, else ``cpu``.

    Without a GPU the CUDA kernels could not run, so the quicker C++-only build serves.
    """
    forced = os.environ.get("ACUZOO_NATIVE_VARIANT")
    if forced:
        if forced not in VARIANTS:
            raise ValueError(f"ACUZOO_NATIVE_VARIANT must be one of {VARIANTS}, got {forced!r}")
        return forced
    return "cuda" if torch.cuda.is_available() and nvcc_path() else "cpu"


def _openmp_flags() -> list[str]:
    """-fopenmp where torch's ATen threads with OpenMP (Linux wheels).

    at::parallel_for is inline header code: compiled without -fopenmp its ``omp parallel``
    is ignored and every CPU kernel runs on one thread. The library then links the
    libgomp that torch already loaded (same soname), so both share one thread pool.
    """
    if torch.__config__.parallel_info().find("ATen parallel backend: OpenMP") < 0:
        return []
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def _cpu_flags() -> list[str]:
    flags = ["-O3", "-fopenmp-simd", *_openmp_flags()]
    # The JIT build is for this machine: use its vector units when it has them.
    if platform.machine() in ("x86_64", "AMD64"):
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
        words = set(cpuinfo.split())
        if {"avx2", "fma"} <= words:
            flags += ["-mavx2", "-mfma"]
        # 512-bit vectors halve the passes over short rows (a 32-wide row is 2 vectors).
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= words:
            flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=512"]
    return flags


def _cuda_flags() -> list[str]:
    return ["-O3", "-lineinfo"]


def _cuda_arch() -> str:
    return os.environ.get("ACUZOO_CUDA_ARCH", DEFAULT_CUDA_ARCH)


def source_files(variant: str) -> list[Path]:
    """The kernel sources and headers a ``variant`` is built from."""
    names = _CPU_SOURCES + _HEADERS + (_CUDA_SOURCES if variant == "cuda" else ())
    return [CSRC / name for name in names]


# About how many minutes a first compile takes on 2 cores, for the announcement.
_COMPILE_MINUTES = {"cpu": 1, "cuda": 15}


def build_name(variant: str) -> str:
    """Library name, unique per sources and their folder, flags, arch list, torch and Python version."""
    digest = hashlib.sha256()
    files = _CPU_SOURCES + _HEADERS + (_CUDA_SOURCES if variant == "cuda" else ())
    for name in files:
        digest.update(name.encode())
        digest.update((CSRC / name).read_bytes())
    # The sources' folder too: torch's builder records absolute paths, so two installations
    # sharing one cache folder would otherwise recompile over each other's library.
    key = [torch.__version__, sys.version, variant, str(CSRC.resolve()), *_cpu_flags()]
    if variant == "cuda":
        key += [_cuda_arch(), *_cuda_flags(), str(torch.version.cuda)]
    digest.update(repr(key).encode())
    return f"acuzoo_native_{variant}_{digest.hexdigest()[:16]}"


def cpu_flags() -> list[str]:
    """The C++ compiler flags of the CPU kernels on this machine."""
    return _cpu_flags()


def build_library(variant: str = "cpu", verbose: bool = False) -> Path:
    """Compile ``variant`` (or reuse the cache) with torch's extension tooling; the library's path.

    The library is also loaded into this process (torch's builder does both)."""
    return _compile_and_load(variant, verbose)


def _compile_and_load(variant: str, verbose: bool) -> Path:
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler found (c++ or $CXX)")
    sources = [str(CSRC / s) for s in _CPU_SOURCES]
    kwargs: dict = {}
    if variant == "cuda":
        if nvcc_path() is None:
            raise RuntimeError(
                "nvcc not found (CUDA_HOME unset or torch is not a CUDA build); the CUDA kernels need it"
            )
        sources += [str(CSRC / s) for s in _CUDA_SOURCES]
        kwargs["extra_cuda_cflags"] = _cuda_flags()
    name = build_name(variant)
    build_dir = cache_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    library = build_dir / f"{name}.so"
    compiling = not library.is_file()
    if compiling:
        log.warning(
            "compiling acuzoo's native kernels (%s) for torch %s, once, about %d min; cached in %s",
            variant,
            torch.__version__,
            _COMPILE_MINUTES[variant],
            build_dir,
        )
    started = time.monotonic()
    saved_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = _cuda_arch()
    try:
        cpp_extension.load(
            name=name,
            sources=sources,
            extra_cflags=_cpu_flags(),
            extra_ldflags=_openmp_flags(),
            build_directory=str(build_dir),
            with_cuda=variant == "cuda",
            is_python_module=False,
            verbose=verbose or compiling,
            **kwargs,
        )
    finally:
        if saved_arch is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch
    if compiling:
        log.warning("acuzoo's native kernels compiled in %.0f s", time.monotonic() - started)
    return library


def _load_prebuilt(variant: str) -> Path | None:
    """Load the wheel's prebuilt library when it serves ``variant`` here; its path, or None."""
    from .native_prebuilt import find_prebuilt, sources_digest

    prebuilt = find_prebuilt()
    if variant != "cpu" or prebuilt is None:
        return None
    why_not = prebuilt.mismatch(sources_digest(source_files("cpu")))
    if why_not is not None:
        _warn_once("prebuilt", f"acuzoo's prebuilt native library is not used ({why_not}); building it instead")
        return None
    torch.ops.load_library(str(prebuilt.library))
    return prebuilt.library


def load(variant: str | None = None, verbose: bool = False) -> str | None:
    """Build (or reuse the cache) and load the extension; the loaded variant, or None.

    A process holds one variant: once one is loaded, it is returned whatever is asked.
    Failures are logged once (a warning with the reason) and remembered.
    """
    global _loaded, _origin
    with _lock:
        if _loaded is not None:
            return _loaded
        if os.environ.get("ACUZOO_NATIVE", "1") == "0":
            _warn_once("off", "acuzoo native extension disabled by ACUZOO_NATIVE=0; using PyTorch paths")
            return None
        variant = variant or default_variant()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if variant in _failed:
            return None
        try:
            _origin = _load_prebuilt(variant) or _compile_and_load(variant, verbose)
        except Exception as exc:  # noqa: BLE001 - any build failure means: use the fallback
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            _failed[variant] = reason
            _warn_once(
                variant,
                f"acuzoo native extension ({variant}) unavailable, using PyTorch paths: {reason}",
            )
            return None
        from . import native_registration

        native_registration.register()
        _loaded = variant
        return _loaded


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def native_available(device: torch.device | str) -> bool:
    """Whether the native kernels serve tensors on ``device`` (builds/loads on first call).

    CPU: any loaded variant. CUDA: the ``cuda`` variant and a visible GPU.
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return False
    loaded = _loaded if _loaded is not None else load()  # no lock once loaded (torch.compile)
    if loaded is None:
        return False
    if device.type == "cpu":
        return True
    if loaded != "cuda":
        _warn_once(
            "cuda-missing",
            "acuzoo native extension was built without CUDA kernels "
            f"({_failed.get('cuda', 'nvcc not found')}); CUDA tensors use PyTorch paths",
        )
        return False
    return torch.cuda.is_available()


def supported_dtype(device: torch.device | str, dtype: torch.dtype) -> bool:
    """float32/float64 on the CPU; also float16/bfloat16 on CUDA (fp32 accumulation)."""
    if torch.device(device).type == "cuda":
        return dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return dtype in (torch.float32, torch.float64)


def native_active_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    groups: int = 1,
    forward_kernel: str | None = None,
    backward_kernel: str | None = None,
) -> torch.Tensor:
    """The ACU through the native kernels (arguments already checked by the caller).

    ``forward_kernel``/``backward_kernel``: names from ``acuzoo.ops.KERNELS``; None: the
    plan's choice among the native kernels (``acuzoo.ops.force`` applies). Differentiable in
    input, weight, positions and bias. Weight and bias are cast to the input's dtype
    (autocast: fp16/bf16 input with fp32 parameters); positions stay in their own dtype
    (float32/float64) and the kernels compute taps and accumulate in fp32 (fp64 for float64
    input). The output and the input gradient take the input's memory format.
    """
    # The global test keeps torch.compile out of load()'s lock once the library is in.
    if _loaded is None and load() is None:
        raise RuntimeError("acuzoo native extension is not available; see the log for why")
    if isinstance(stride, int):
        stride = (stride, stride)
    if forward_kernel is None or backward_kernel is None:
        from .plan import apply_forced, describe_call, forced, plan_call

        call = describe_call(input, weight, positions, tuple(stride), groups, native=True)
        max_synapses = cuda_depthwise_max_synapses() if input.device.type == "cuda" else None
        plan = apply_forced(call, plan_call(call, max_synapses, allow_pytorch=False), *forced())
        forward_kernel = forward_kernel or plan.forward
        backward_kernel = backward_kernel or plan.backward
    weight = weight.to(input.dtype)
    if bias is not None:
        bias = bias.to(input.dtype)
    return torch.ops.acuzoo.active_conv2d(
        input, weight, positions, bias, list(stride), groups, forward_kernel, backward_kernel
    )


_cuda_limit: list[int] = []


def cuda_depthwise_max_synapses() -> int | None:
    """The CUDA depthwise kernels' table limit (synapses per channel), as the library states it."""
    if not _cuda_limit and _loaded == "cuda" and hasattr(torch.ops.acuzoo, "cuda_depthwise_max_synapses"):
        _cuda_limit.append(int(torch.ops.acuzoo.cuda_depthwise_max_synapses()))
    return _cuda_limit[0] if _cuda_limit else None


def library_info() -> dict[str, object]:
    """What is loaded: variant, library file, whether it is the wheel's prebuilt one, torch, and
    each ``acuzoo`` op with the devices it has kernels for. Loads the library if needed."""
    from .native_prebuilt import PREBUILT_DIR

    loaded = load()
    ops = {}
    if loaded is not None:
        names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("acuzoo::"))
        for name in names:
            keys = ("CPU", "CUDA", "Autograd", "Meta")
            ops[name] = [k for k in keys if torch._C._dispatch_has_kernel_for_dispatch_key(name, k)]
    return {
        "variant": loaded,
        "library": str(_origin) if _origin else None,
        "prebuilt": bool(_origin and _origin.parent == PREBUILT_DIR),
        "torch": torch.__version__,
        "cache": str(cache_root()),
        "unavailable": dict(_failed),
        "ops": ops,
    }


def _print_info() -> int:
    info = library_info()
    print(f"variant:  {info['variant'] or 'none (PyTorch paths serve)'}")
    where = "prebuilt, from the wheel" if info["prebuilt"] else "built just in time"
    print(f"library:  {info['library'] or '-'}" + (f" ({where})" if info["library"] else ""))
    print(f"torch:    {info['torch']}")
    print(f"cache:    {info['cache']}")
    for variant, why in info["unavailable"].items():
        print(f"no {variant}: {why}")
    for name, keys in info["ops"].items():
        print(f"op {name}: {', '.join(keys)}")
    return 0 if info["variant"] else 1


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m acuzoo.ops.native", description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build (or reuse) the extension and load it")
    parser.add_argument("--info", action="store_true", help="say which library is loaded, from where, and its ops")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--cuda", action="store_true", help="build the CUDA kernels too (needs nvcc)")
    choice.add_argument("--cpu-only", action="store_true", help="build the C++ kernels only")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.info:
        return _print_info()
    if not args.build:
        parser.print_help()
        return 2
    variant = "cuda" if args.cuda else "cpu" if args.cpu_only else None
    loaded = load(variant, verbose=args.verbose)
    if loaded is None or (variant is not None and loaded != variant):
        print(f"acuzoo native extension: build failed ({_failed})", file=sys.stderr)
        return 1
    return _print_info()


if __name__ == "__main__":
    sys.exit(_main())
