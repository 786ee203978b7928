"""Decoder LLM engines side by side: trtflow's KV-cache ORT engines (FP32, INT8 and INT4
weight-only MatMulNBits) vs PyTorch eager (transformers `generate`), ONNX Runtime GenAI
INT4 (its model builder), OpenVINO GenAI INT4/INT8 (optimum-intel export, NNCF weight
compression) and llama.cpp (llama-cpp-python; the shipped Q4_1 GGUF, and Q4_0/Q4_K_M
re-quantized from it) — same prompts, same evaluation windows, same thread count.

For each params file (default: params/smollm2.yaml, whose weights sit on the GGUF's
4-bit grid, and params/smollm2_finetuned.yaml, whose weights do not): perplexity on the
evaluation text (the same token windows for every contender), prefill tokens/s
(128-token prompt) and decode tokens/s (128 new tokens) at bs1 (and bs4 where the
runtime batches), and the issue's targets with their verdicts. JSON with the CPU flags
in bench/results/llm.json. The data must exist (`trtflow prepare` or `make demo-llm`).

    python bench/llm.py [--params params/smollm2.yaml ...] [--peers eager ortgenai ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("eager", "ortgenai", "openvino", "llamacpp", "trtflow_graphs")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def speed_row(batch: int, prompt: int, new: int, prefill: list[float], decode: list[float]
              ) -> dict[str, Any]:
    p, d = statistics.median(prefill), statistics.median(decode)
    return {"batch": batch, "prompt_tokens": prompt, "new_tokens": new,
            "prefill_tokens_per_s": batch * prompt / p,
            "decode_tokens_per_s": batch * (new - 1) / d,
            "decode_ms_per_step": 1000 * d / (new - 1)}


# -- peers -----------------------------------------------------------------------------
def eager(ctx: dict[str, Any]) -> dict[str, Any]:
    import torch

    from trtflow.llm.evaluate import measure_torch, score_text, torch_logits

    model = ctx["model"]
    score, _ = score_text(torch_logits(model), ctx["windows"], reference_argmax=ctx["ref_argmax"])
    speed = [measure_torch(model, p, ctx["new"], ctx["repeats"]).as_dict() for p in ctx["prompts"]]
    return {"runtime": f"torch {torch.__version__} eager, transformers generate",
            "perplexity": score.perplexity, "top1_agreement": score.top1_agreement,
            "speed": speed}


def ortgenai(ctx: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime_genai as og

    out = ctx["peer_dir"] / "ortgenai-int4"
    if not (out / "genai_config.json").is_file():
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                        str(ctx["hf_folder"]), "-o", str(out), "-p", "int4", "-e", "cpu",
                        "-c", str(ctx["peer_dir"] / "ortgenai-cache")], check=True,
                       stdout=subprocess.DEVNULL)
    # the builder leaves the thread count to ORT (hardware_concurrency / 2: one thread on
    # a 2-core host); every contender here runs the same threads, so set them
    settings_file = out / "genai_config.json"
    settings = json.loads(settings_file.read_text())
    settings["model"]["decoder"].setdefault("session_options", {})[
        "intra_op_num_threads"] = ctx["threads"]
    settings_file.write_text(json.dumps(settings, indent=4))
    config = og.Config(str(out))
    model = og.Model(config)

    def logits_of(window: np.ndarray) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window) + 1)
        gen = og.Generator(model, params)
        gen.append_tokens(window[None].astype(np.int32))
        return np.asarray(gen.get_output("logits"))

    first = logits_of(ctx["windows"][0])
    ppl = None
    if first.shape[-2] == ctx["windows"].shape[1]:  # logits for every position
        from trtflow.llm.evaluate import score_text

        score, _ = score_text(lambda ids: np.concatenate([logits_of(w) for w in ids]),
                              ctx["windows"], reference_argmax=ctx["ref_argmax"])
        ppl = (score.perplexity, score.top1_agreement)
    speed = []
    for prompt in ctx["prompts"]:
        pre, dec = [], []
        for i in range(ctx["repeats"] + 1):
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=prompt.shape[1] + ctx["new"], do_sample=False,
                                      min_length=prompt.shape[1] + ctx["new"],
                                      batch_size=prompt.shape[0])
            gen = og.Generator(model, params)
            t0 = time.perf_counter()
            gen.append_tokens(prompt.astype(np.int32))
            t1 = time.perf_counter()
            for _ in range(ctx["new"] - 1):
                gen.generate_next_token()
            t2 = time.perf_counter()
            if i:  # the first is the warm-up
                pre.append(t1 - t0)
                dec.append(t2 - t1)
        speed.append(speed_row(prompt.shape[0], prompt.shape[1], ctx["new"], pre, dec))
    return {"runtime": f"onnxruntime-genai {og.__version__} builder int4 (MatMulNBits, "
            f"GroupQueryAttention), {ctx['threads']} threads", "engine_mb": _size_mb(out),
            "perplexity": ppl[0] if ppl else None, "top1_agreement": ppl[1] if ppl else None,
            "speed": speed}


def _size_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20, 1)


def openvino(ctx: dict[str, Any]) -> dict[str, Any]:
    import openvino_genai as ov_genai

    rows = {}
    for fmt in ctx["formats"]:
        out = ctx["peer_dir"] / f"openvino-{fmt}"
        if not (out / "openvino_model.xml").is_file():
            extra = ["--group-size", "32", "--ratio", "1.0"] if fmt == "int4" else []
            subprocess.run([str(Path(sys.executable).parent / "optimum-cli"), "export",
                            "openvino", "--model", str(ctx["hf_folder"]), "--task",
                            "text-generation-with-past", "--weight-format", fmt, *extra,
                            str(out)], check=True, stdout=subprocess.DEVNULL)
        from optimum.intel import OVModelForCausalLM

        from trtflow.llm.evaluate import score_text

        ov_model = OVModelForCausalLM.from_pretrained(str(out), ov_config={
            "INFERENCE_NUM_THREADS": "2", "CACHE_DIR": ""}, compile=True)

        def logits_of(ids: np.ndarray, m: Any = ov_model) -> np.ndarray:
            import torch

            with torch.no_grad():
                return m(input_ids=torch.from_numpy(ids)).logits.float().numpy()

        score, _ = score_text(logits_of, ctx["windows"], reference_argmax=ctx["ref_argmax"])
        del ov_model
        pipe = ov_genai.LLMPipeline(str(out), "CPU", INFERENCE_NUM_THREADS=ctx["threads"])
        hint = str(pipe.get_tokenizer()) and "default (bf16 where the CPU has AVX512_BF16)"
        config = ov_genai.GenerationConfig(max_new_tokens=ctx["new"], min_new_tokens=ctx["new"])
        text = ctx["tokenizer"].decode(ctx["prompts"][0][0])
        pre, dec = [], []
        for i in range(ctx["repeats"] + 1):
            result = pipe.generate([text], config)
            perf = result.perf_metrics
            if i:
                n_in = perf.get_num_input_tokens()
                pre.append(perf.get_ttft().mean / 1000)
                dec.append(perf.get_tpot().mean / 1000 * (ctx["new"] - 1))
        rows[fmt] = {"runtime": f"openvino-genai {ov_genai.__version__} (optimum-intel export, "
                     f"NNCF {fmt} weights), inference precision {hint}",
                     "engine_mb": _size_mb(out), "perplexity": score.perplexity,
                     "top1_agreement": score.top1_agreement,
                     "speed": [speed_row(1, n_in, ctx["new"], pre, dec)]}
    return rows


def llamacpp(ctx: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    gguf = ctx.get("gguf")
    if gguf is None:
        return {"not_run": "no GGUF of this model (llama.cpp's HF->GGUF converter is not in "
                "the llama-cpp-python wheel)"}
    rows = {}
    for kind in ctx["gguf_types"]:
        path = Path(gguf)
        if kind != "Q4_1":
            path = ctx["peer_dir"] / f"smollm2.{kind}.gguf"
            if not path.is_file():
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
                params.allow_requantize = True
                path.parent.mkdir(parents=True, exist_ok=True)
                llama_cpp.llama_model_quantize(str(gguf).encode(), str(path).encode(), params)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=ctx["threads"],
                              n_batch=512, logits_all=True, verbose=False)

        def logits_of(ids: np.ndarray, m: Any = llm) -> np.ndarray:
            out = []
            for window in ids:
                m.reset()
                m.eval(window.tolist())
                out.append(np.array(m.scores[: len(window)]))
            return np.stack(out)

        from trtflow.llm.evaluate import score_text

        score, _ = score_text(logits_of, ctx["windows"], reference_argmax=ctx["ref_argmax"])
        prompt = ctx["prompts"][0][0].tolist()
        pre, dec = [], []
        for i in range(ctx["repeats"] + 1):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            for _ in range(ctx["new"] - 1):
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
            t2 = time.perf_counter()
            if i:
                pre.append(t1 - t0)
                dec.append(t2 - t1)
        rows[kind] = {"runtime": f"llama-cpp-python {llama_cpp.__version__} ({kind}"
                      f"{'' if kind == 'Q4_1' else ', re-quantized from the Q4_1 GGUF'})",
                      "engine_mb": round(path.stat().st_size / 2**20, 1),
                      "perplexity": score.perplexity, "top1_agreement": score.top1_agreement,
                      "speed": [speed_row(1, len(prompt), ctx["new"], pre, dec)]}
        del llm
    return rows


def trtflow_graphs(ctx: dict[str, Any]) -> dict[str, Any]:
    """trtflow's engines on the fused graph (GroupQueryAttention) and on the traced one,
    built here from the same stored calibrations (the store's export is whichever graph
    compile.py wrote). Speed is measured round-robin, one generation per engine per
    round, so that a shared host's load drifts over all engines alike."""
    from trtflow.llm.evaluate import ort_logits, score_text
    from trtflow.llm.generate import OrtDecoder, session_for
    from trtflow.llm.ort_engine import float_graph, matmulnbits_graph
    from trtflow.llm.quantize import load_quantized

    compiler = ctx["compiler"]
    shape = compiler.shape()
    threads = compiler.params.evaluation.threads
    rows, decoders = {}, {}
    for graph in ("fused", "traced"):
        folder = ctx["peer_dir"] / f"trtflow-{graph}-{compiler.source().name[:12]}"
        base = folder / "model.onnx"
        if not base.is_file():
            float_graph(compiler.float_weights(), shape, base, fused=graph == "fused")
        for name, target in compiler.params.targets.items():
            engine = base
            if target.precision != "fp32":
                calibration = compiler.calibrate(target)
                engine = folder / f"{name}-{calibration.name[:12]}.onnx"
                if not engine.is_file():
                    matmulnbits_graph(base, load_quantized(calibration), engine,
                                      target.accuracy_level)
            decoder = decoders[f"{graph} {name}"] = OrtDecoder(session_for(engine, threads),
                                                               shape)
            score, _ = score_text(ort_logits(decoder), ctx["windows"],
                                  reference_argmax=ctx["ref_argmax"])
            rows[f"{graph} {name}"] = {
                "runtime": f"trtflow {graph} graph, onnxruntime CPU, {threads} threads",
                "precision": target.precision, "engine_mb": round(engine.stat().st_size / 2**20, 1),
                "perplexity": score.perplexity, "top1_agreement": score.top1_agreement,
                "speed": []}
    for prompt in ctx["prompts"]:
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in decoders}
        for i in range(ctx["repeats"] + 1):
            for key, decoder in decoders.items():
                g = decoder.generate(prompt, ctx["new"])
                if i:  # the first round is the warm-up
                    times[key][0].append(g.prefill_seconds)
                    times[key][1].append(g.decode_seconds)
        for key, (pre, dec) in times.items():
            rows[key]["speed"].append(speed_row(prompt.shape[0], prompt.shape[1], ctx["new"],
                                                pre, dec))
            tps = rows[key]["speed"][-1]["decode_tokens_per_s"]
            log(f"  {key}: bs{prompt.shape[0]} decode {tps:.2f} tok/s")
    return rows


# -- verdicts --------------------------------------------------------------------------
def decode_bs1(row: dict[str, Any]) -> float | None:
    for s in row.get("speed") or []:
        if s["batch"] == 1:
            return float(s["decode_tokens_per_s"])
    return None


def verdicts(model: dict[str, Any]) -> list[dict[str, Any]]:
    rows = model["contenders"]
    fp32, int8, int4 = (decode_bs1(rows.get(f"trtflow {p}", {})) for p in ("fp32", "int8", "int4"))
    eager_tps = decode_bs1(rows.get("eager", {}))
    out = []

    def add(name: str, value: float | None, target: float) -> None:
        out.append({"target": name, "value": value, "goal": target,
                    "met": None if value is None else value >= target})

    if int4 and fp32:
        add("INT4 decode / FP32 ORT decode (bs1)", int4 / fp32, 2.0)
    if int4 and eager_tps:
        add("INT4 decode / eager decode (bs1)", int4 / eager_tps, 3.0)
    if int8 and fp32:
        add("INT8 decode / FP32 ORT decode (bs1)", int8 / fp32, 1.5)
    for p, limit in (("int4", 0.03), ("int8", 0.01)):
        row = rows.get(f"trtflow {p}")
        if row:
            out.append({"target": f"{p.upper()} perplexity increase", "value":
                        row["perplexity_increase"], "goal": f"<= {limit}",
                        "met": row["perplexity_increase"] <= limit})
    peers = {k: decode_bs1(v) for k, v in rows.items() if not k.startswith("trtflow")
             and k != "eager" and decode_bs1(v)}
    if peers and int4:
        best = max(peers, key=lambda k: peers[k] or 0)
        out.append({"target": "INT4 decode / fastest peer (bs1)", "peer": best,
                    "value": int4 / (peers[best] or 1), "goal": 1.0,
                    "met": int4 >= (peers[best] or 0),
                    "peer_perplexity": rows[best].get("perplexity"),
                    "trtflow_perplexity": rows["trtflow int4"]["perplexity"]})
    return out


# -- driver ----------------------------------------------------------------------------
def write(out: Path, results: dict[str, Any], model: dict[str, Any]) -> None:
    """Write the JSON now (after each contender: a slow or failed peer loses nothing)."""
    results["models"][model["model"]] = model
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))


def run_model(params_file: Path, peers: list[str], overrides: dict[str, Any],
              options: dict[str, Any], save: Any) -> dict[str, Any]:
    import torch

    from trtflow.llm.compile import LlmCompiler, source_path
    from trtflow.llm.config import load_llm_params
    from trtflow.llm.quantize import token_windows
    from trtflow.llm.validate import speed_prompt, validate
    from trtflow.store import ArtifactStore

    params = load_llm_params(params_file)
    params.evaluation = params.evaluation.model_copy(
        update={k: v for k, v in overrides.items() if v is not None})
    e = params.evaluation
    torch.set_num_threads(e.threads)
    compiler = LlmCompiler(params, ROOT, ArtifactStore(ROOT / ".trtflow" / "store"))
    log(f"{params.model.name}: trtflow engines")
    report = validate(compiler, params.targets, progress=lambda line: log("  " + line))
    model, tokenizer = compiler.model()
    windows = token_windows(tokenizer, compiler.evaluation_text, e.window, e.windows)
    from trtflow.llm.evaluate import ort_logits, score_text
    from trtflow.llm.generate import OrtDecoder, session_for

    ref = OrtDecoder(session_for(compiler.build(params.targets["fp32"]), e.threads),
                     compiler.shape())
    _, ref_argmax = score_text(ort_logits(ref), windows)
    ctx = {"model": model, "tokenizer": tokenizer, "windows": windows, "ref_argmax": ref_argmax,
           "prompts": [speed_prompt(windows, b, e.prompt_tokens) for b in e.batch_sizes],
           "new": e.new_tokens, "repeats": e.repeats, "hf_folder": compiler.source(),
           "threads": e.threads,
           "peer_dir": ROOT / "build" / "llm" / params.model.name / "peers",
           "compiler": compiler,
           **options,
           "gguf": source_path(params, ROOT) if params.model.finetune is None
           and source_path(params, ROOT).suffix == ".gguf" else None}
    contenders: dict[str, Any] = {f"trtflow {k}": v for k, v in report["targets"].items()}
    out = {"model": params.model.name, "params": str(params_file.relative_to(ROOT)),
           "finetune": params.model.finetune.model_dump() if params.model.finetune else None,
           "evaluation": e.model_dump(), "evaluation_tokens": report["evaluation_tokens"],
           "contenders": contenders}
    save(out)
    for peer in peers:
        log(f"{params.model.name}: {peer}")
        try:
            result = globals()[peer](ctx)
        except Exception as exc:  # a peer that fails is reported, not fatal
            traceback.print_exc()
            result = {"not_run": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
        if peer in ("openvino", "llamacpp", "trtflow_graphs") and "not_run" not in result:
            contenders.update({f"{peer} {k}": v for k, v in result.items()})
        else:
            contenders[peer] = result
        save(out)
    fp32_ppl = report["targets"]["fp32"]["perplexity"]
    for row in contenders.values():
        if row.get("perplexity"):
            row["perplexity_increase"] = row["perplexity"] / fp32_ppl - 1
    out["targets"] = verdicts(out)
    save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", nargs="+", type=Path, default=[
        ROOT / "params/smollm2.yaml", ROOT / "params/smollm2_finetuned.yaml"])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/llm.json")
    parser.add_argument("--windows", type=int, help="evaluation windows (default: params)")
    parser.add_argument("--repeats", type=int, help="timed generations per contender")
    parser.add_argument("--new-tokens", type=int, help="decode length (default: params, 128)")
    parser.add_argument("--agreement-tokens", type=int, help="greedy-agreement length")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: params")
    parser.add_argument("--formats", nargs="+", default=["int4", "int8"],
                        help="OpenVINO GenAI weight formats")
    parser.add_argument("--gguf-types", nargs="+", default=["Q4_1", "Q4_0", "Q4_K_M"],
                        help="llama.cpp types (Q4_1: the shipped file)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from trtflow.llm.compile import host

    results: dict[str, Any] = {"host": host(), "threads": 2, "models": {}}
    if args.out.is_file():  # a run of some models keeps the others' figures
        results["models"] = json.loads(args.out.read_text()).get("models", {})
    for params_file in args.params:
        model = run_model(params_file.resolve(), args.peers,
                          {"windows": args.windows, "repeats": args.repeats,
                           "new_tokens": args.new_tokens, "batch_sizes": args.batch_sizes,
                           "agreement_tokens": args.agreement_tokens},
                          {"formats": args.formats, "gguf_types": args.gguf_types},
                          lambda partial: write(args.out, results, partial))
        for t in model["targets"]:
            log(f"  {model['model']}: {t['target']}: {t['value']} (goal {t['goal']}, "
                f"met {t['met']})")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
