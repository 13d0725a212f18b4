// Portability macros for the header-only math shared by the CPU (.cpp) and CUDA (.cu) kernels.
// Nothing here depends on torch, so the same code compiles under g++ and nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MAVIS_HD __host__ __device__ __forceinline__
#else
#define MAVIS_HD inline
#endif
