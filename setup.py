"""Builds the kernel extension ``retinaface_ext._C``.

C++ sources are always compiled. CUDA sources are compiled too when torch is a CUDA
build and nvcc is found. Environment switches:

  RETINAFACE_EXT_CPU_ONLY=1    never compile CUDA (quick local rebuilds)
  RETINAFACE_EXT_FORCE_CUDA=1  compile CUDA or fail loudly if it cannot be done
  TORCH_CUDA_ARCH_LIST         GPU architectures; defaults to DEFAULT_CUDA_ARCHS when
                               no GPU is visible (torch would otherwise fail to
                               enumerate GPUs)
  MAX_JOBS                     parallel compile jobs (ninja)
"""

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()


def _find_cuda_home():
    """The CUDA toolkit folder: the one holding bin/nvcc *and* include/cuda_runtime.h.

    torch guesses it from the nvcc on PATH, which fails when that nvcc is a wrapper
    script (as /usr/local/bin/nvcc is here): it would take /usr/local.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates += [Path("/usr/local/cuda")] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return


_find_cuda_home()  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# CUDA 13 builds sm_75 and newer; PTX of the newest listed arch covers later GPUs.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"
BUILD_MESSAGES = []  # printed when the extension is actually built, not on every setup.py call


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _should_build_cuda():
    """Returns (build_cuda, reason) for the log."""
    if _env_flag("RETINAFACE_EXT_CPU_ONLY"):
        return False, "RETINAFACE_EXT_CPU_ONLY is set"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        problems.append("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    if problems:
        if _env_flag("RETINAFACE_EXT_FORCE_CUDA"):
            sys.exit("RETINAFACE_EXT_FORCE_CUDA=1 but CUDA cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc in {CUDA_HOME}"


def _nvidia_include_dirs():
    """The pip-installed CUDA headers next to torch (nvidia/cu13/include and the like).

    torch's headers include cublas_v2.h and cusparse.h, which the pip wheels put in
    site-packages/nvidia/cu*/include rather than in the toolkit's own folder.
    """
    site_packages = Path(torch.__file__).resolve().parent.parent
    return sorted(glob.glob(str(site_packages / "nvidia" / "cu*" / "include")))


def _extension():
    build_cuda, reason = _should_build_cuda()
    cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    # No FMA contraction: kernels must round exactly like the references and torchvision.
    # OpenMP: at::parallel_for is a header template, parallel only when compiled with it.
    cxx_flags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    link_flags = ["-fopenmp"]
    include_dirs = [str(ROOT / "csrc")]
    if not build_cuda:
        BUILD_MESSAGES.append(f"retinaface_ext: building backends: CPU only ({reason})")
        return CppExtension(
            "retinaface_ext._C",
            cpp_sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    BUILD_MESSAGES.append(
        f"retinaface_ext: building backends: CPU + CUDA ({reason}); "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '<visible GPUs>')}; "
        f"CUDA sources: {', '.join(cuda_sources)}"
    )
    return CUDAExtension(
        "retinaface_ext._C",
        cpp_sources + cuda_sources,
        include_dirs=include_dirs + _nvidia_include_dirs(),
        define_macros=[("RFE_WITH_CUDA", None)],
        extra_link_args=link_flags,
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "--fmad=false", "--expt-relaxed-constexpr"],
        },
    )


class BuildWithInfo(BuildExtension):
    """Also writes retinaface_ext/_build_info.py next to _C: the torch it was built for.

    The package reads it before loading _C, so a mismatched build is explained instead
    of crashing the interpreter.
    """

    def run(self):
        for message in BUILD_MESSAGES:
            print(message, flush=True)
        super().run()
        ext = self.extensions[0]
        backends = ["cpu"] + (["cuda"] if any(s.endswith(".cu") for s in ext.sources) else [])
        out_dir = Path(self.get_ext_fullpath(ext.name)).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "_build_info.py").write_text(
            "# Written by setup.py when _C was built. Do not edit.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"TORCH_CUDA_VERSION = {torch.version.cuda!r}\n"
            f"BACKENDS = {tuple(backends)!r}\n"
        )
        print(f"retinaface_ext: compiled backends: {', '.join(backends)}", flush=True)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)},
)
