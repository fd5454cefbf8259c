"""Time per run of an ONNX Runtime CUDA session under CUDA-graph replay, shared by the GPU
benchmarks (gpu_bench.py, cuda/conv_forms.py through gpu_bench, cuda/int8_bench.py).

Runs are queued without a host sync between them (io-binding, one graph per gpu_graph_id), so the
time per run is kernel time, not per-run overhead.
"""

from __future__ import annotations

import time

import onnxruntime as ort


def replay_seconds(sess, x, ys, graph_id: int, min_time: float, max_reps: int) -> float:
    """Seconds per run of `sess` with input X bound to the CUDA OrtValue `x` and outputs Y0, Y1, ...
    to `ys`: three warm-up runs (the first calls tune and allocate, then capture, then replay), then
    batches of runs queued without a host sync, each closed by one synchronised run, grown until a
    batch lasts `min_time` seconds or holds `max_reps` runs."""
    b = sess.io_binding()
    b.bind_ortvalue_input("X", x)
    for i, y in enumerate(ys):
        b.bind_ortvalue_output(f"Y{i}", y)
    return binding_replay_seconds(sess, b, graph_id, min_time, max_reps)


def binding_replay_seconds(sess, b, graph_id: int, min_time: float, max_reps: int) -> float:
    """replay_seconds' loop for any io-binding `b` whose inputs and outputs are fixed GPU memory."""
    ro = ort.RunOptions()
    ro.add_run_config_entry("gpu_graph_id", str(graph_id))
    for _ in range(3):  # warm-up runs, then capture, then replay
        sess.run_with_iobinding(b, ro)
    ro_async = ort.RunOptions()
    ro_async.add_run_config_entry("gpu_graph_id", str(graph_id))
    ro_async.add_run_config_entry("disable_synchronize_execution_providers", "1")
    reps = 5
    while True:
        b.synchronize_outputs()
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run_with_iobinding(b, ro_async)
        sess.run_with_iobinding(b, ro)  # one synchronised run closes the batch
        dt = (time.perf_counter() - t0) / (reps + 1)
        if dt * (reps + 1) >= min_time or reps >= max_reps:
            break
        reps = int(min(max_reps, max(reps * 2, min_time / max(dt, 1e-6))))
    return dt
