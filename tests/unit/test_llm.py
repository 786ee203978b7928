"""The decoder path on a tiny random Llama built here: the KV-cache graph against
transformers, the generation loop, weight-only codes against ONNX Runtime's
MatMulNBits, AWQ folding, perplexity arithmetic, and every bad input's error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trtflow.errors import CalibrationError, DataError, ModelError, ParamsError
from trtflow.llm.data import read_text, topic_splits
from trtflow.llm.evaluate import greedy_agreement, score_text
from trtflow.llm.export import DecoderShape, check_parity, hf_weights
from trtflow.llm.generate import OrtDecoder, check_context, session_for
from trtflow.llm.ort_engine import float_graph, matmulnbits_graph
from trtflow.llm.quantize import capture_inputs, load_quantized, quantize_decoder, save_quantized
from trtflow.llm.weight_only import WeightOnlyConfig, check_group, quantize_groups, search_clip

WORDS = "the cat sat on a mat and the dog ran to the red door of an old house".split()


def tiny_llama(seed: int = 0):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=48, rope_theta=10000.0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # distinct norms, as in a trained model (random init: all ones)
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def tiny_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *sorted(set(WORDS))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = tiny_llama()
    shape = DecoderShape.from_config(model.config)
    weights = {k: v.numpy() for k, v in hf_weights(model).items()}
    graph = float_graph(weights, shape, tmp_path_factory.mktemp("llm") / "model.onnx")
    return model, shape, weights, graph


def ids(batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, (batch, seq))


def test_kv_cache_graph_matches_transformers_over_prefill_and_decode(tiny) -> None:  # type: ignore[no-untyped-def]
    model, shape, _, graph = tiny
    parity = check_parity(session_for(graph), model, ids(2, 12), 5, shape)
    assert parity["max_abs_error"] < 1e-4 and parity["argmax_agreement"] == 1.0


def test_greedy_generation_equals_transformers_generate(tiny) -> None:  # type: ignore[no-untyped-def]
    model, shape, _, graph = tiny
    prompt = ids(1, 6, seed=3)
    got = OrtDecoder(session_for(graph), shape).generate(prompt, 10)
    with torch.no_grad():
        expected = model.generate(torch.from_numpy(prompt), max_new_tokens=10, do_sample=False,
                                  min_new_tokens=10, pad_token_id=0)[0, 6:].numpy()
    np.testing.assert_array_equal(got.tokens[0], expected)


def test_left_padded_batch_generates_what_each_prompt_does_alone(tiny) -> None:  # type: ignore[no-untyped-def]
    _, shape, _, graph = tiny
    decoder = OrtDecoder(session_for(graph), shape)
    short, long = ids(1, 4, seed=5)[0], ids(1, 7, seed=6)[0]
    batch = np.zeros((2, 7), np.int64)
    batch[0, 3:], batch[1] = short, long
    mask = np.ones((2, 7), np.int64)
    mask[0, :3] = 0
    together = decoder.generate(batch, 6, prompt_mask=mask).tokens
    np.testing.assert_array_equal(together[0], decoder.generate(short[None], 6).tokens[0])
    np.testing.assert_array_equal(together[1], decoder.generate(long[None], 6).tokens[0])


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True), (8, False)])
def test_matmulnbits_engine_computes_the_dequantized_weights(tiny, tmp_path: Path, bits: int,  # type: ignore[no-untyped-def]
                                                            symmetric: bool) -> None:
    _, shape, weights, graph = tiny
    cfg = WeightOnlyConfig(bits=bits, group_size=32, symmetric=symmetric, method="rtn")  # type: ignore[arg-type]
    q = quantize_decoder(weights, shape, cfg)
    engine = matmulnbits_graph(graph, q, tmp_path / "engine.onnx", accuracy_level=0)
    dequantized = dict(q.float_weights)
    dequantized.update({k: w.dequantize() for k, w in q.weights.items()})
    reference = float_graph(dequantized, shape, tmp_path / "dequantized.onnx")
    x = ids(2, 9)
    got = OrtDecoder(session_for(engine), shape).logits_stepwise(x, 4)
    expected = OrtDecoder(session_for(reference), shape).logits_stepwise(x, 4)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_awq_folding_keeps_the_float_model_and_lowers_the_error(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, shape, weights, graph = tiny
    x = capture_inputs(model, ids(4, 24), rows=96)
    awq = quantize_decoder(weights, shape, WeightOnlyConfig(bits=4, method="awq"), x)
    folded = {k: v for k, v in awq.float_weights.items()}
    logits = OrtDecoder(session_for(float_graph(folded, shape, tmp_path / "f.onnx")), shape)
    plain = OrtDecoder(session_for(graph), shape)
    np.testing.assert_allclose(logits.logits_stepwise(ids(1, 8), 8),
                               plain.logits_stepwise(ids(1, 8), 8), atol=1e-4)
    assert set(awq.awq_alphas) >= {"layers.0.qkv", "layers.0.gate_up", "layers.0.down_proj"}
    save_quantized(awq, tmp_path / "art")
    again = load_quantized(tmp_path / "art")
    np.testing.assert_array_equal(again.weights["layers.1.q_proj"].codes,
                                  awq.weights["layers.1.q_proj"].codes)
    assert again.weights["lm_head"].bits == 8  # lm_head kept at higher precision


def test_activation_aware_clipping_lowers_output_error_on_outlier_channels() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 32)).astype(np.float32)
    w[rng.integers(0, 128, 40), rng.integers(0, 32, 40)] *= 8  # weight outliers
    x = rng.standard_normal((256, 128)).astype(np.float32)
    rtn = quantize_groups(w, 4, 32, symmetric=True)
    clipped = search_clip(w, x, 4, 32, symmetric=True)
    error = [float(((x @ w - x @ q.dequantize()) ** 2).mean()) for q in (rtn, clipped)]
    assert error[1] < error[0]
    assert clipped.clip_ratio is not None and clipped.clip_ratio.min() < 1.0


def test_rounding_error_is_at_most_half_a_step() -> None:
    w = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    for symmetric in (True, False):
        q = quantize_groups(w, 4, 16, symmetric)
        step = np.repeat(q.scales, 16, axis=1).T.reshape(64, 8)
        assert (np.abs(q.dequantize() - w) <= step / 2 + 1e-6).all()


def test_group_size_that_does_not_divide_the_hidden_size_names_it(tiny) -> None:  # type: ignore[no-untyped-def]
    _, shape, weights, _ = tiny
    with pytest.raises(CalibrationError, match=r"group_size 128 does not divide "
                       r"layers\.0\.q_proj's input dimension 64"):
        quantize_decoder(weights, shape, WeightOnlyConfig(group_size=128, method="rtn"))
    with pytest.raises(CalibrationError, match="power of two"):
        check_group("w", 96, 48)


def test_prompt_longer_than_the_context_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    _, shape, _, graph = tiny
    with pytest.raises(DataError, match="40 tokens \\+ 10 new tokens exceed the model's "
                       "context of 48"):
        OrtDecoder(session_for(graph), shape).generate(ids(1, 40), 10)
    check_context(38, 10, 48)  # fits exactly


def test_perplexity_of_uniform_logits_is_the_vocabulary_size() -> None:
    windows = ids(3, 10)
    score, argmax = score_text(lambda x: np.zeros((*x.shape, 64), np.float32), windows,
                               reference_argmax=np.zeros((3, 9), np.int64))
    assert score.perplexity == pytest.approx(64.0)
    assert score.tokens == 27 and score.top1_agreement == 1.0 and argmax.shape == (3, 9)


def test_greedy_agreement_counts_the_common_prefix() -> None:
    ref = [np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8])]
    assert greedy_agreement([np.array([1, 2, 3, 4]), np.array([5, 6, 0, 8])], ref) == 0.75


def test_topic_split_is_deterministic_and_disjoint() -> None:
    first, second = topic_splits(), topic_splits()
    assert first == second
    calibration, evaluation = first["calibration"], first["evaluation"]
    assert len(calibration) > 3 * len(evaluation) > 0
    assert evaluation.split("\n\n")[0][:200] not in calibration


def test_text_that_is_not_utf8_names_the_file_and_byte(tmp_path: Path) -> None:
    bad = tmp_path / "calibration.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError, match=r"calibration\.txt: not UTF-8 text \(byte 0xe9 at "
                       r"offset 3\)"):
        read_text(bad)


def write_gguf(path: Path, arch: str, tokenizer: bool) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_that_is_not_a_decoder_names_file_and_architecture(tmp_path: Path) -> None:
    from trtflow.llm.source import load_decoder

    path = write_gguf(tmp_path / "encoder.gguf", "bert", tokenizer=True)
    with pytest.raises(ModelError, match=r"encoder\.gguf: GGUF architecture 'bert' is not a "
                       "decoder"):
        load_decoder(path)


def test_gguf_without_tokenizer_is_refused(tmp_path: Path) -> None:
    from trtflow.llm.source import load_decoder

    path = write_gguf(tmp_path / "bare.gguf", "llama", tokenizer=False)
    with pytest.raises(ModelError, match=r"bare\.gguf: GGUF has no tokenizer"):
        load_decoder(path)
    (tmp_path / "junk.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ModelError, match=r"junk\.gguf: not a GGUF file"):
        load_decoder(tmp_path / "junk.gguf")


def test_hf_folder_without_tokenizer_is_refused(tmp_path: Path) -> None:
    from trtflow.llm.source import load_decoder

    tiny_llama().save_pretrained(str(tmp_path / "model"))
    with pytest.raises(ModelError, match="tokenizer missing"):
        load_decoder(tmp_path / "model")


def test_bad_inputs_leave_the_store_empty(tmp_path: Path) -> None:
    from trtflow.llm.compile import LlmCompiler
    from trtflow.llm.config import load_llm_params
    from trtflow.store import ArtifactStore

    tiny_llama().save_pretrained(str(tmp_path / "model"))  # no tokenizer
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "calibration.txt").write_text(" ".join(WORDS * 20))
    (tmp_path / "data" / "evaluation.txt").write_bytes(b"\xff\xfe bad")
    params = tmp_path / "p.yaml"
    params.write_text("model: {name: tiny, source: model}\ndata: {calibration: "
                      "data/calibration.txt, evaluation: data/evaluation.txt}\n"
                      "targets: {int4: {precision: int4}}\n")
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(DataError, match="evaluation.txt: not UTF-8"):
        LlmCompiler(load_llm_params(params), tmp_path, store)
    (tmp_path / "data" / "evaluation.txt").write_text(" ".join(WORDS * 20))
    compiler = LlmCompiler(load_llm_params(params), tmp_path, store)
    with pytest.raises(ModelError, match="tokenizer missing"):
        compiler.export()
    assert not any(p.is_file() for p in (tmp_path / "store").rglob("*")) \
        if (tmp_path / "store").exists() else True


def test_compile_path_builds_and_validates_a_tiny_decoder(tmp_path: Path) -> None:
    from trtflow.llm.compile import LlmCompiler
    from trtflow.llm.config import load_llm_params
    from trtflow.llm.validate import validate
    from trtflow.store import ArtifactStore

    tiny_llama().save_pretrained(str(tmp_path / "model"))
    tiny_tokenizer().save_pretrained(str(tmp_path / "model"))
    (tmp_path / "data").mkdir()
    for split in ("calibration", "evaluation"):
        (tmp_path / "data" / f"{split}.txt").write_text(" ".join(WORDS * 30))
    params = tmp_path / "p.yaml"
    params.write_text(
        "model: {name: tiny, source: model}\n"
        "data: {calibration: data/calibration.txt, evaluation: data/evaluation.txt}\n"
        "calibration: {windows: 2, window: 16, rows: 32}\n"
        "evaluation: {windows: 2, window: 16, agreement_tokens: 4}\n"
        "targets:\n  fp32: {precision: fp32}\n"
        "  int4: {precision: int4, lm_head_group_size: 32, gates: {max_perplexity_increase: 1.0}}\n"
        "  int8: {precision: int8, method: rtn, symmetric: true, lm_head_group_size: 32}\n")
    compiler = LlmCompiler(load_llm_params(params), tmp_path, ArtifactStore(tmp_path / "st"))
    report = validate(compiler, compiler.params.targets, measure_speed=False,
                      progress=lambda _line: None)
    rows = report["targets"]
    assert rows["fp32"]["perplexity_increase"] == 0.0
    assert rows["fp32"]["greedy_agreement"] == 1.0
    assert rows["int4"]["gates"]["max_perplexity_increase"]["passed"]
    stored = {p.name for p in (tmp_path / "st").iterdir()}
    assert {"llm-source", "llm-export", "llm-calibrate", "llm-build"} <= stored


def test_params_refuse_a_group_size_that_is_no_power_of_two(tmp_path: Path) -> None:
    from trtflow.llm.config import load_llm_params

    path = tmp_path / "p.yaml"
    path.write_text("model: {name: x, source: smollm2}\ntargets: {int4: {precision: int4, "
                    "group_size: 48}}\n")
    with pytest.raises(ParamsError, match=r"p\.yaml: field targets\.int4\.group_size"):
        load_llm_params(path)


def test_generate_command_names_a_missing_params_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "trtflow.cli", "generate", "nope.yaml",
                          "--prompt", "hi", "--root", str(tmp_path)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "nope.yaml" in res.stderr and "Traceback" not in res.stderr
