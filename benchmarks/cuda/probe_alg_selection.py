"""What making a cuSPARSELt plan costs, step by step, and whether the costly step runs in parallel.

    python3 benchmarks/cuda/probe_alg_selection.py

Loads libcusparseLt.so.0 from the environment's nvidia/ packages (ctypes, no onnxsparse), makes the
plans of 8 distinct fp16 problems (ResNet-50 and 1024/4096 linear shapes) one after another, timing
the descriptors, cusparseLtMatmulAlgSelectionInit and cusparseLtMatmulPlanInit of each; then two of
them again; then all 8 on 2, 4 and 8 threads at a time (ctypes releases the GIL during the calls).
Prints wall times. Needs a CUDA GPU.
"""
import ctypes
import glob
import os
import site
import threading
import time

paths = []
for d in site.getsitepackages():
    paths += glob.glob(os.path.join(d, "nvidia", "**", "libcusparseLt.so*"), recursive=True)
lib = ctypes.CDLL(sorted(paths)[0])
print("cuSPARSELt:", os.path.basename(sorted(paths)[0]))


def Buf():
    """An opaque cuSPARSELt struct (512 bytes, as cusparseLt.h declares them)."""
    return ctypes.create_string_buffer(512)


handle = Buf()
assert lib.cusparseLtInit(handle) == 0
R16F, ROW, COL, S50, NT, T, C32F = 2, 2, 1, 0, 0, 1, 2  # CUDA_R_16F, orders, 50%, ops, COMPUTE_32F


def make(m, n, k, steps):
    """D[n, m] = A[n, k] (2:4) . X[m, k]^T, as the library describes it; appends the step times."""
    a, b, c, mm, alg, plan = Buf(), Buf(), Buf(), Buf(), Buf(), Buf()
    i64 = ctypes.c_int64
    t0 = time.perf_counter()
    assert lib.cusparseLtStructuredDescriptorInit(handle, a, i64(n), i64(k), i64(k), ctypes.c_uint32(16), R16F, ROW, S50) == 0
    assert lib.cusparseLtDenseDescriptorInit(handle, b, i64(m), i64(k), i64(k), ctypes.c_uint32(16), R16F, ROW) == 0
    assert lib.cusparseLtDenseDescriptorInit(handle, c, i64(n), i64(m), i64(n), ctypes.c_uint32(16), R16F, COL) == 0
    assert lib.cusparseLtMatmulDescriptorInit(handle, mm, NT, T, a, b, c, c, C32F) == 0
    t1 = time.perf_counter()
    assert lib.cusparseLtMatmulAlgSelectionInit(handle, alg, mm, 0) == 0
    t2 = time.perf_counter()
    assert lib.cusparseLtMatmulPlanInit(handle, plan, mm, alg) == 0
    t3 = time.perf_counter()
    steps.append((t1 - t0, t2 - t1, t3 - t2))


problems = [(4096, 4096, 1024), (4096, 1024, 4096), (25088, 512, 256), (100352, 64, 64),
            (100352, 256, 64), (25088, 128, 1152), (6272, 256, 2304), (1568, 2048, 512)]
steps = []
t = time.perf_counter()
for p in problems:
    make(*p, steps)
seq = time.perf_counter() - t
print(f"sequential: {seq:.3f} s for {len(problems)} problems; per problem (describe, selection, plan) ms:",
      [tuple(round(x * 1e3, 1) for x in s) for s in steps])
steps = []
t = time.perf_counter()
for p in problems[:2]:
    make(*p, steps)
print(f"again, the first two: {time.perf_counter() - t:.3f} s", [tuple(round(x * 1e3, 1) for x in s) for s in steps])
for nthreads in (2, 4, 8):
    steps = []
    threads = [threading.Thread(target=make, args=(*problems[i % len(problems)], steps)) for i in range(8)]
    t = time.perf_counter()
    for i in range(0, 8, nthreads):
        group = threads[i:i + nthreads]
        for th in group:
            th.start()
        for th in group:
            th.join()
    print(f"8 problems, {nthreads} threads at a time: {time.perf_counter() - t:.3f} s (sequential {seq:.3f} s)")
