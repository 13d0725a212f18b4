"""Build mavis_ext._C with torch.utils.cpp_extension.

* CppExtension (csrc/ops.cpp + csrc/cpu/*.cpp) when no CUDA toolkit or no CUDA build of torch;
* CUDAExtension (adding csrc/cuda/*.cu) when both are present, or when FORCE_CUDA=1 (for build
  machines without a GPU: CI compiles every .cu this way);
* MAVIS_FORCE_CPU=1 forces the CPU-only build.
Install with `pip install --no-build-isolation .` (torch must already be installed).
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("MAVIS_FORCE_CPU", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    use_cuda = _want_cuda()
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = ["csrc/ops.cpp"] + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-Wno-psabi", "-DPy_LIMITED_API=0x03090000"]
    extra = {"cxx": cxx}
    if use_cuda:
        sources += rel("csrc/cuda/*.cu")
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        print("mavis_ext: building the CUDA extension (CUDA %s)" % torch.version.cuda)
        ext = CUDAExtension
    else:
        print("mavis_ext: building the CPU-only extension")
        ext = CppExtension
    return ext(
        name="mavis_ext._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc"), os.path.join(HERE, "csrc", "include")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


setup(
    packages=find_packages(include=["mavis_ext", "mavis_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
