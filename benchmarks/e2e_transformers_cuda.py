"""End to end on real exports, CUDA: dense vs `onnxsparse compile --target cuda` in ONNX Runtime's CUDA EP.

    python benchmarks/e2e_transformers_cuda.py [--models bert,llama,resnet50] [--work DIR] [--out FILE.json]
                                                [--bert-batches 1,8,32] [--llama-tokens 1,16,2048]
                                                [--resnet-batches 32,128] [--tiny] [--cpu]

Each model, random init, fp16, exported from PyTorch with torch.onnx (the dynamo exporter, the
TorchScript one where it fails):
  bert      transformers' BertModel, BERT-large (24 layers, hidden 1024, FFN 4096, 16 heads), seq 384,
            input_ids [B, 384] -> last_hidden_state; batches 1, 8, 32;
  llama     transformers' LlamaModel with 3 decoder layers of Llama-7B's shape (hidden 4096, FFN
            11008, 32 heads), no KV cache, input_ids [1, T] -> last_hidden_state; T = 1, 16 (decode-
            sized GEMMs) and 2048 (prefill);
  resnet50  torchvision's ResNet-50, [B, 3, 224, 224] -> logits; batches 32, 128.
then `onnxsparse prune --method magnitude` (every eligible layer to 2:4), per shape
`onnxsparse tune --provider cuda` (that shape's distinct layers only, small budgets) and
`onnxsparse compile --target cuda` for that shape, and the pruned dense model against the compiled
one in ONNX Runtime's CUDA EP, io-binding with inputs and outputs on the GPU, without and with CUDA
graphs (enable_cuda_graph), dense and compiled interleaved over rounds, medians. Prints a table with
the device, the versions and the command; --out writes the rows as JSON.

--tiny: small configurations of the same three (what tests/test_e2e_transformers_script.py runs on
the CPU); --cpu: no GPU part (export, prune, compile with every eligible layer rewritten, and one run
of dense and compiled on the CPU EP, to check the pipeline and the outputs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = {
    "bert": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 vocab_size=30522, max_position_embeddings=512),
    "llama": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=3, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
}
TINY = {
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 vocab_size=100, max_position_embeddings=64),
    "llama": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=100, max_position_embeddings=64),
}
BERT_SEQ, TINY_SEQ = 384, 16


def log(message: str) -> None:
    print(f"[e2e-cuda] {message}", file=sys.stderr, flush=True)


@dataclass
class Model:
    """One exported model: its input's name, the shapes it is measured at, how to make an input."""

    name: str
    path: Path
    input: str
    shapes: list[list[int]]
    integer_input: bool  # token ids (int64) or an fp16 image
    vocab: int = 0
    notes: list[str] = field(default_factory=list)

    def feed(self, shape, seed=0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.integer_input:
            return rng.integers(0, self.vocab, size=shape, dtype=np.int64)
        return (rng.standard_normal(shape) * 0.5).astype(np.float16)


# ---------------------------------------------------------------------------------------- export

def _export(module, example, input_name: str, dynamic: dict[int, str], path: Path) -> str:
    """torch.onnx.export, the dynamo exporter first; returns which exporter wrote it."""
    import torch

    module.eval()
    errors = []
    for dynamo in (True, False):
        try:
            with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # the exporter's progress: not the table
                torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=["Y"],
                                  dynamic_axes={input_name: dynamic, "Y": {0: dynamic[0]} if 0 in dynamic else {}},
                                  dynamo=dynamo, opset_version=18)
            return "dynamo" if dynamo else "torchscript"
        except Exception as e:  # noqa: BLE001 - the other exporter is tried, both errors reported
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
    raise RuntimeError("torch.onnx.export failed: " + "; ".join(errors))


class _LastHidden:
    """Wraps a transformers model so that the export has one tensor output."""

    @staticmethod
    def wrap(model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids):
                return self.inner(input_ids=input_ids, use_cache=False).last_hidden_state \
                    if "use_cache" in self.inner.forward.__code__.co_varnames else \
                    self.inner(input_ids=input_ids).last_hidden_state

        return Wrapped(model)


def export_bert(work: Path, tiny: bool, batches: list[int]) -> Model:
    import torch
    from transformers import BertConfig, BertModel

    path = work / ("bert_tiny.onnx" if tiny else "bert_large.onnx")
    seq = TINY_SEQ if tiny else BERT_SEQ
    config = BertConfig(**(TINY if tiny else CONFIGS)["bert"])
    model = Model("bert-large" if not tiny else "bert-tiny", path, "input_ids", [[b, seq] for b in batches], True,
                  vocab=config.vocab_size)
    if not path.is_file():
        torch.manual_seed(0)
        net = BertModel(config, add_pooling_layer=False).half().eval()
        how = _export(_LastHidden.wrap(net), torch.zeros((2, seq), dtype=torch.int64), "input_ids", {0: "B"}, path)
        model.notes.append(f"exported with torch.onnx ({how})")
        log(f"exported {path.name} ({how})")
    return model


def export_llama(work: Path, tiny: bool, tokens: list[int]) -> Model:
    import torch
    from transformers import LlamaConfig, LlamaModel

    path = work / ("llama_tiny.onnx" if tiny else "llama_3layers.onnx")
    config = LlamaConfig(**(TINY if tiny else CONFIGS)["llama"])
    model = Model("llama-3L-7B-shaped" if not tiny else "llama-tiny", path, "input_ids", [[1, t] for t in tokens],
                  True, vocab=config.vocab_size)
    if not path.is_file():
        torch.manual_seed(0)
        net = LlamaModel(config).half().eval()
        how = _export(_LastHidden.wrap(net), torch.zeros((1, 8), dtype=torch.int64), "input_ids", {1: "T"}, path)
        model.notes.append(f"exported with torch.onnx ({how})")
        log(f"exported {path.name} ({how})")
    return model


def _tiny_cnn():
    """A small ResNet-like net (stem, two bottlenecks, head) for --tiny where torchvision is absent."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, c, mid, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                      nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                      nn.Conv2d(mid, c * 2 if stride > 1 else c, 1, bias=False),
                                      nn.BatchNorm2d(c * 2 if stride > 1 else c))
            self.skip = (nn.Sequential(nn.Conv2d(c, c * 2, 1, stride, bias=False), nn.BatchNorm2d(c * 2))
                         if stride > 1 else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    return nn.Sequential(nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         Bottleneck(32, 16, 1), Bottleneck(32, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


def export_resnet(work: Path, tiny: bool, batches: list[int]) -> Model:
    import torch

    path = work / ("resnet_tiny.onnx" if tiny else "resnet50.onnx")
    size = 32 if tiny else 224
    model = Model("resnet50" if not tiny else "resnet-tiny", path, "X", [[b, 3, size, size] for b in batches], False)
    if not path.is_file():
        torch.manual_seed(0)
        if tiny:
            net = _tiny_cnn()
        else:
            import torchvision

            net = torchvision.models.resnet50(weights=None)
        net = net.half().eval()
        how = _export(net, torch.zeros((2, 3, size, size), dtype=torch.float16), "X", {0: "B"}, path)
        model.notes.append(f"exported with torch.onnx ({how})")
        log(f"exported {path.name} ({how})")
    return model


# ------------------------------------------------------------------------------- onnxsparse CLI

def cli(*args: str) -> str:
    """Runs `python -m onnxsparse ARGS`, returns stdout; stops with its stderr on failure."""
    cmd = [sys.executable, "-m", "onnxsparse", *args]
    t0 = time.time()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd[2:])} failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    log(f"{shlex.join(cmd[2:])}: {time.time() - t0:.0f} s")
    return done.stdout


def shape_arg(model: Model, shape) -> str:
    return f"{model.input}:[{','.join(str(d) for d in shape)}]"


def prune(model: Model) -> Path:
    out = model.path.with_name(model.path.stem + ".pruned.onnx")
    if not out.is_file():
        cli("prune", str(model.path), "-o", str(out), "--method", "magnitude", "-q")
    return out


def tune_and_compile(model: Model, pruned: Path, shape, cache: Path, budget: float, whole_budget: float) -> tuple[Path, dict]:
    """`tune --provider cuda` for this shape, then `compile --target cuda`; the compile report."""
    tag = "x".join(str(d) for d in shape)
    out = pruned.with_name(pruned.stem.replace(".pruned", "") + f".cuda.{tag}.onnx")
    whole = ["--whole-budget", str(whole_budget)] if whole_budget > 0 else ["--no-whole-model"]
    tuned = cli("tune", str(pruned), "--provider", "cuda", "--input-shapes", shape_arg(model, shape), "--cache",
                str(cache), "--budget", str(budget), *whole, "--quiet", "--json")
    out.with_suffix(".tune.json").write_text(tuned)
    try:  # one line per timed problem: what tune measured (the reasons compile keeps layers dense)
        for p in json.loads(tuned).get("problems", []):
            if "ratio" in p:
                count = len(p["layers"]) if isinstance(p["layers"], list) else p["layers"]
                log(f"  tune {p['problem']}: dense {p['dense_us']:.1f} us, sparse {p['sparse_us']:.1f} us, "
                    f"x{p['ratio']:.2f} ({count} layers)")
    except (ValueError, KeyError, TypeError) as e:
        log(f"  (tune's JSON not summarised: {e})")
    report = json.loads(cli("compile", str(pruned), "-o", str(out), "--target", "cuda", "--cache", str(cache),
                            "--input-shapes", shape_arg(model, shape), "--json", "-q"))
    return out, report


def compile_layout(pruned: Path, layout: str, dense: list[str] = (), tag: str = "") -> tuple[Path, dict]:
    """Every eligible layer rewritten but those named in ``dense`` (``--force-dense``), convs chained in
    ``layout`` (``compile --conv-layout``), no tune."""
    out = pruned.with_name(pruned.stem.replace(".pruned", "") + f".{tag or layout}.onnx")
    keep = [arg for name in dense for arg in ("--force-dense", name)]
    report = json.loads(cli("compile", str(pruned), "-o", str(out), "--conv-layout", layout, *keep, "--json", "-q"))
    return out, report


def spatial_convs(path: Path) -> list[str]:
    """The names of the Convs whose kernel is not 1x1 (ResNet's 3x3 convs and its 7x7 stem)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and shapes.get(n.input[1], [0, 0, 1, 1])[2:] != [1, 1]]


def compile_all(pruned: Path) -> tuple[Path, dict]:
    """Every eligible layer rewritten (no target): the CPU check of the pipeline."""
    out = pruned.with_name(pruned.stem.replace(".pruned", "") + ".all.onnx")
    report = json.loads(cli("compile", str(pruned), "-o", str(out), "--json", "-q"))
    return out, report


def count_layers(report: dict) -> str:
    rewritten = report.get("rewritten", report.get("layers_rewritten"))
    total = report.get("layers", report.get("eligible"))
    if isinstance(rewritten, list):
        rewritten = len(rewritten)
    if isinstance(total, list):
        total = len(total)
    return f"{rewritten}/{total}" if rewritten is not None and total is not None else "?"


# ----------------------------------------------------------------------------------------- timing

def _session(path: Path, provider: str, graph: bool, extra: dict | None = None):
    import onnxruntime as ort

    from onnxsparse.session import session_options

    opts = session_options()
    if provider == "cuda":
        providers = [("CUDAExecutionProvider", {**({"enable_cuda_graph": "1"} if graph else {}), **(extra or {})})]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=providers)


class Bound:
    """A session with its input and output on the GPU (io-binding); with graph, a fixed output."""

    def __init__(self, path: Path, model: Model, shape, graph: bool, extra: dict | None = None):
        import onnxruntime as ort

        self.sess = _session(path, "cuda", graph, extra)
        self.x = ort.OrtValue.ortvalue_from_numpy(model.feed(shape), "cuda", 0)
        self.binding = self.sess.io_binding()
        self.binding.bind_ortvalue_input(model.input, self.x)
        out = self.sess.get_outputs()[0]
        if graph:  # a graph replays into fixed memory: the output shape from one plain run
            probe = _session(path, "cuda", False, extra)
            y = probe.run(None, {model.input: model.feed(shape)})[0]
            del probe
            self.y = ort.OrtValue.ortvalue_from_shape_and_type(list(y.shape), y.dtype, "cuda", 0)
            self.binding.bind_ortvalue_output(out.name, self.y)
        else:
            self.binding.bind_output(out.name, "cuda")
        for _ in range(3):  # first calls: plans, CUDA-graph capture
            self.sess.run_with_iobinding(self.binding)

    def run_ms(self, runs: int) -> list[float]:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.sess.run_with_iobinding(self.binding)
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    def output(self) -> np.ndarray:
        return self.binding.copy_outputs_to_cpu()[0]


def time_pair(dense: Path, compiled: Path, model: Model, shape, graph: bool, rounds: int, budget_s: float,
              dense_extra: dict | None = None, compiled_extra: dict | None = None) -> dict:
    """Dense and compiled interleaved: each round times a batch of runs of each; medians over all runs.
    ``dense_extra``, ``compiled_extra``: CUDA EP options of each session (``prefer_nhwc``)."""
    d, s = Bound(dense, model, shape, graph, dense_extra), Bound(compiled, model, shape, graph, compiled_extra)
    probe = d.run_ms(3) + s.run_ms(3)
    per_run = max(statistics.median(probe), 1e-3)
    runs = int(min(200, max(3, budget_s * 1e3 / per_run / (2 * rounds))))
    dense_ms, sparse_ms, ratios = [], [], []
    for _ in range(rounds):
        a, b = d.run_ms(runs), s.run_ms(runs)
        dense_ms += a
        sparse_ms += b
        ratios.append(statistics.median(a) / statistics.median(b))
    do, so = d.output().astype(np.float64), s.output().astype(np.float64)
    diff = float(np.linalg.norm(so - do) / max(np.linalg.norm(do), 1e-30))
    del d, s
    dm, sm = statistics.median(dense_ms), statistics.median(sparse_ms)
    return {"dense_ms": round(dm, 3), "compiled_ms": round(sm, 3), "speedup": round(dm / sm, 3),
            "round_speedups": [round(r, 3) for r in ratios], "runs": runs * rounds, "rel_diff": diff}


def check_cpu(dense: Path, compiled: Path, model: Model, shape) -> dict:
    """One run of each on the CPU EP: the compiled model's output against the pruned dense one's."""
    feed = {model.input: model.feed(shape)}
    do = _session(dense, "cpu", False).run(None, feed)[0].astype(np.float64)
    so = _session(compiled, "cpu", False).run(None, feed)[0].astype(np.float64)
    diff = float(np.linalg.norm(so - do) / max(np.linalg.norm(do), 1e-30))
    return {"rel_diff": diff, "shape_out": list(so.shape), "finite": bool(np.isfinite(so).all())}


# ---------------------------------------------------------------------------------------- report

def package_versions(names) -> dict:
    """Each importable package's version; "absent" for one that does not import."""
    found = {}
    for pkg in names:
        try:
            found[pkg] = __import__(pkg).__version__
        except Exception:  # noqa: BLE001 - absent is reported as absent
            found[pkg] = "absent"
    return found


def environment() -> dict:
    import onnxruntime as ort

    info = {"python": platform.python_version(), "onnxruntime": ort.__version__,
            "providers": ",".join(p for p in ort.get_available_providers() if p != "CPUExecutionProvider")}
    info.update(package_versions(("torch", "transformers", "torchvision", "onnx")))
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["gpu"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else "none"
    except Exception:  # noqa: BLE001
        info["gpu"] = "none"
    import importlib.metadata as md

    for pkg in ("nvidia-cusparselt-cu13", "nvidia-cusparselt-cu12"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    info["ONNXSPARSE_CUSPARSELT_LIBRARY"] = os.environ.get("ONNXSPARSE_CUSPARSELT_LIBRARY", "")
    info["cpu"] = platform.processor() or platform.machine()
    return info


def table(rows: list[dict], env: dict, command: str) -> str:
    lines = [f"device: {env.get('gpu', 'none')}; CPU {env['cpu']}",
             "versions: " + ", ".join(f"{k} {env[k]}" for k in ("onnxruntime", "torch", "transformers", "torchvision",
                                                                 "onnx", "python") if k in env)
             + "".join(f", {k} {v}" for k, v in env.items() if k.startswith("nvidia-cusparselt")),
             f"command: {command}", "",
             "| model | input | CUDA graph | sparse layers | dense ms | compiled ms | speedup | rel diff |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        model = r["model"] + "".join(f"; {r[k]}" for k in ("compiled", "baseline") if k in r)
        lines.append(f"| {model} | {r['input']} | {r.get('cuda_graph', '-')} | {r.get('layers', '?')} | "
                     f"{r.get('dense_ms', '-')} | {r.get('compiled_ms', '-')} | "
                     f"{str(r['speedup']) + 'x' if 'speedup' in r else '-'} | {r.get('rel_diff', float('nan')):.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bert,llama,resnet50", help="comma-separated: bert, llama, resnet50")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "e2e_transformers_cuda",
                        help="folder for the exported, pruned and compiled models (reused when present)")
    parser.add_argument("--out", type=Path, help="write the rows and the environment as JSON")
    parser.add_argument("--bert-batches", default="1,8,32")
    parser.add_argument("--llama-tokens", default="1,16,2048")
    parser.add_argument("--resnet-batches", default="32,128")
    parser.add_argument("--tiny", action="store_true", help="small configurations of the same models")
    parser.add_argument("--cpu", action="store_true", help="no GPU part: check export, prune, compile on the CPU EP")
    parser.add_argument("--graph", default="off,on", help="CUDA graphs: off, on or off,on")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of dense and compiled runs")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per model, shape and graph mode")
    parser.add_argument("--tune-budget", type=float, default=0.3, help="tune's --budget (per distinct layer)")
    parser.add_argument("--conv-layout", choices=("nchw", "nhwc"), default="nchw",
                        help="nhwc: compile every eligible layer with --conv-layout nhwc (no tune) and time it "
                        "against the dense model as ONNX Runtime runs it and with its CUDA EP's prefer_nhwc=1")
    parser.add_argument("--tune-whole-budget", type=float, default=2.0,
                        help="tune's --whole-budget (0: --no-whole-model)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"bert", "llama", "resnet50"})
    if unknown:
        print(f"e2e_transformers_cuda: unknown model(s) {', '.join(unknown)} (bert, llama, resnet50)", file=sys.stderr)
        return 2
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    graphs = [g.strip() == "on" for g in args.graph.split(",") if g.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    command = shlex.join([os.path.relpath(sys.argv[0], REPO) if argv is None else "benchmarks/e2e_transformers_cuda.py",
                          *(sys.argv[1:] if argv is None else argv)])
    env = environment()
    if not args.cpu and "CUDAExecutionProvider" not in env["providers"]:
        print("e2e_transformers_cuda: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu, or --cpu)",
              file=sys.stderr)
        return 2
    rows = []
    cache = args.work / ("tune_tiny.json" if args.tiny else "tune.json")
    for name in models:
        if name == "bert":
            model = export_bert(args.work, args.tiny, ints(args.bert_batches))
        elif name == "llama":
            model = export_llama(args.work, args.tiny, ints(args.llama_tokens))
        else:
            model = export_resnet(args.work, args.tiny, ints(args.resnet_batches))
        pruned = prune(model)
        if args.cpu:
            compiled, report = compile_all(pruned)
            for shape in model.shapes:
                row = {"model": model.name, "input": "x".join(map(str, shape)), "layers": count_layers(report),
                       **check_cpu(pruned, compiled, model, shape)}
                rows.append(row)
                log(json.dumps(row))
            continue
        if args.conv_layout == "nhwc":
            # All eligible convs sparse, and only the 1x1 ones (the others dense, where ONNX Runtime's
            # own NHWC convs run them with prefer_nhwc=1). Baselines: the dense model as ONNX Runtime runs
            # it; both sessions with prefer_nhwc=1 (ONNX Runtime's layout transformer takes the dense
            # convs to NHWC and drops the Transposes that meet the chains' ones).
            spatial = spatial_convs(pruned)
            variants = [("compile --conv-layout nhwc (all eligible)", compile_layout(pruned, "nhwc")),
                        (f"compile --conv-layout nhwc, {len(spatial)} non-1x1 convs --force-dense",
                         compile_layout(pruned, "nhwc", spatial, "nhwc1x1"))]
            for shape in model.shapes:
                for graph in graphs:
                    for label, (compiled, report) in variants:
                        for baseline, extra, own in (("dense", None, None),
                                                     ("dense prefer_nhwc=1", {"prefer_nhwc": "1"}, None),
                                                     ("both prefer_nhwc=1", {"prefer_nhwc": "1"}, {"prefer_nhwc": "1"})):
                            row = {"model": model.name, "input": "x".join(map(str, shape)),
                                   "cuda_graph": "on" if graph else "off", "layers": count_layers(report),
                                   "compiled": label, "baseline": baseline}
                            try:
                                row.update(time_pair(pruned, compiled, model, shape, graph, args.rounds, args.budget,
                                                     extra, own))
                            except Exception as e:  # noqa: BLE001 - one failing case is reported, the rest still run
                                row["error"] = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                            rows.append(row)
                            log(json.dumps(row))
            continue
        for shape in model.shapes:
            try:
                compiled, report = tune_and_compile(model, pruned, shape, cache, args.tune_budget, args.tune_whole_budget)
            except RuntimeError as e:
                log(str(e))
                rows.append({"model": model.name, "input": "x".join(map(str, shape)), "error": str(e)[:300]})
                continue
            for graph in graphs:
                row = {"model": model.name, "input": "x".join(map(str, shape)), "cuda_graph": "on" if graph else "off",
                       "layers": count_layers(report)}
                try:
                    row.update(time_pair(pruned, compiled, model, shape, graph, args.rounds, args.budget))
                except Exception as e:  # noqa: BLE001 - one failing case is reported, the rest still run
                    row["error"] = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                rows.append(row)
                log(json.dumps(row))
    text = table(rows, env, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"environment": env, "command": command, "rows": rows}, indent=1) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
