"""Time per run of an ONNX Runtime CUDA session under CUDA-graph replay, shared by the GPU
benchmarks (gpu_bench.py, cuda/conv_forms.py through gpu_bench, cuda/int8_bench.py).

Runs are queued without a host sync between them (io-binding, one graph per gpu_graph_id), so the
time per run is kernel time, not per-run overhead.
"""

from __future__ import annotations

import statistics
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


def kernel_times(sess, b, runs: int = 5, top: int = 12, name_chars: int = 90) -> dict:
    """GPU kernel time per run of `sess` on io-binding `b`, by kernel (names cut to `name_chars`),
    the largest `top`, from CUDA's activity trace: torch.profiler records every kernel of the
    process, ONNX Runtime's too. {"error": ...} where torch or the trace is not available."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return {"error": "torch is not installed: no kernel trace"}
    totals: dict[str, list] = {}
    try:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                sess.run_with_iobinding(b)
            torch.cuda.synchronize()
        for ev in prof.events():
            if ev.device_type.name != "CUDA":
                continue
            entry = totals.setdefault(ev.name[:name_chars], [0.0, 0])
            entry[0] += getattr(ev, "device_time_total", None) or ev.cuda_time_total
            entry[1] += 1
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        return {"error": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
    rows = sorted(((k, v[0] / runs, v[1] / runs) for k, v in totals.items()), key=lambda r: -r[1])
    return {"gpu_us_per_run": round(sum(r[1] for r in rows), 1),
            "kernels": [{"kernel": k, "us": round(us, 1), "calls": round(c, 1)} for k, us, c in rows[:top]]}


def binding_median_seconds(sess, b, seconds: float, at_least: int = 5, most: int | None = None) -> float:
    """Median seconds of synchronised runs of `sess` on io-binding `b` (each run waits for the GPU):
    runs for `seconds`, at least `at_least` of them, at most `most`."""
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < at_least:
        t0 = time.perf_counter()
        sess.run_with_iobinding(b)
        times.append(time.perf_counter() - t0)
        if most is not None and len(times) >= most:
            break
    return statistics.median(times)
