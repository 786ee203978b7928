"""A decoder through the plan (trtflow/llm/stages.py): params select the decoder steps,
stages run and are reused through the same store and keys, the validation report is
every engine's, bad inputs fail at preflight naming the file with nothing stored.
A tiny seeded Llama built here stands in for SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trtflow.context import Context, preflight
from trtflow.errors import CalibrationError, DataError, ModelError, ParamsError
from trtflow.params import load_params, parse_params
from trtflow.plan import plan, run_up_to, steps_for
from trtflow.stages.validation_report import ValidationReport

from .test_llm import WORDS, tiny_llama, tiny_tokenizer, write_gguf

PARAMS = """
model: {name: tiny, source: {decoder: model}}
data: {calibration: {text: data/calibration.txt}, evaluation: {text: data/evaluation.txt}}
calibration: {decoder: {windows: 2, window: 16, rows: 32}}
validate:
  batch_sizes: [1, 2]
  decoder: {windows: 2, window: 16, prompt_tokens: 8, new_tokens: 6, agreement_tokens: 4,
            repeats: 1}
targets:
  fp32: {precision: fp32}
  int8:
    precision: int8
    weight_only: {method: rtn, symmetric: true, lm_head_group_size: 32}
    gates: {min_agreement: 0.5, max_perplexity_increase: 0.5}
  int4:
    precision: int4
    weight_only: {method: awq, lm_head_group_size: 32}
    gates: {min_agreement: 0.3, min_greedy_agreement: 0.0}
"""


def project(root: Path, params: str = PARAMS, tokenizer: bool = True) -> Path:
    """A project with the tiny decoder as a Hugging Face folder, text data and params."""
    tiny_llama().save_pretrained(str(root / "model"))
    if tokenizer:
        tiny_tokenizer().save_pretrained(str(root / "model"))
    (root / "data").mkdir(exist_ok=True)
    for split in ("calibration", "evaluation"):
        (root / "data" / f"{split}.txt").write_text(" ".join(WORDS * 30))
    path = root / "p.yaml"
    path.write_text(params)
    return path


def stored_files(root: Path) -> list[Path]:
    store = root / ".trtflow" / "store"
    return [p for p in store.rglob("*") if p.is_file()] if store.exists() else []


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Context, dict[str, list]]:
    root = tmp_path_factory.mktemp("decoder")
    ctx = Context.create(load_params(project(root)), root)
    return ctx, {t: run_up_to(ctx, "validate", t) for t in ("fp32", "int8", "int4")}


def test_a_decoder_source_selects_the_decoder_plan() -> None:
    params = parse_params({"model": {"name": "m", "source": {"decoder": "smollm2"}},
                           "data": {"calibration": {"text": "c.txt"},
                                    "evaluation": {"text": "e.txt"}},
                           "targets": {"fp32": {}, "int4": {"precision": "int4"}}})
    assert [n.label for n in plan(params, ["fp32", "int4"])] == [
        "export", "build [fp32]", "validate [fp32]", "calibrate [int4]", "build [int4]",
        "validate [int4]"]
    assert [n.label for n in plan(params, ["int4"]).model_nodes()] == ["export"]
    assert steps_for(params)["build"].version.startswith("decoder")
    assert load_params(Path(__file__).parents[2] / "params" / "digits.yaml").model.source \
        .decoder is None


def test_decoder_fields_leave_other_models_digests_alone() -> None:
    params = parse_params({"model": {"name": "m", "source": {"builtin": "digits"}}})
    dumped = json.dumps(params.model_dump(mode="json", by_alias=True))
    assert "decoder" not in dumped and "weight_only" not in dumped
    assert "perplexity" not in dumped


@pytest.mark.parametrize("targets, expected", [
    ({"q": {"precision": "int4"}}, r"targets\.q\.precision: int4 is weight-only"),
    ({"q": {"precision": "int8", "weight_only": {"method": "rtn"}}},
     r"targets\.q\.weight_only: only decoder"),
    ({"q": {"gates": {"max_perplexity_increase": 0.1}}},
     r"targets\.q\.gates\.max_perplexity_increase: a decoder-only gate"),
])
def test_decoder_only_settings_are_refused_on_other_models(targets: dict, expected: str) -> None:
    with pytest.raises(ParamsError, match=expected):
        parse_params({"model": {"name": "m", "source": {"builtin": "digits"}},
                      "targets": targets})


def test_decoder_params_refuse_what_the_decoder_plan_does_not_build() -> None:
    with pytest.raises(ParamsError) as err:
        parse_params({"model": {"name": "m", "source": {"decoder": "smollm2"}},
                      "data": {"calibration": {"text": "c.txt"}},
                      "export": {"opset": 17},
                      "targets": {"a": {"precision": "fp8"},
                                  "b": {"precision": "int8", "backend": "openvino"}}})
    message = str(err.value)
    for expected in ("data.evaluation: a decoder needs UTF-8 text",
                     "targets.a.precision: a decoder builds ['fp32', 'int8', 'int4']",
                     "targets.b: a decoder builds ONNX Runtime CPU engines"):
        assert expected in message
    with pytest.raises(ParamsError, match=r"'targets\.q\.weight_only\.group_size': 48 is not "
                       "a power of two"):
        parse_params({"model": {"name": "m", "source": {"decoder": "smollm2"}},
                      "data": {"calibration": {"text": "c.txt"}, "evaluation": {"text": "e"}},
                      "targets": {"q": {"precision": "int4", "weight_only": {"group_size": 48}}}})


def test_decoder_stages_are_stored_under_the_five_stage_names(compiled) -> None:  # type: ignore[no-untyped-def]
    ctx, runs = compiled
    assert [r.stage for r in runs["fp32"]] == ["export", "build", "validate"]
    assert [r.stage for r in runs["int4"]] == ["export", "calibrate", "build", "validate"]
    calibration = Path(runs["int4"][1].path)
    settings = json.loads((calibration / "weight_only.json").read_text())
    assert settings["config"]["bits"] == 4 and settings["config"]["method"] == "awq"
    assert runs["int8"][1].report["method"] == "weight-only rtn"
    again = run_up_to(ctx, "validate", "int4")  # same store, same keys: nothing re-run
    assert all(r.cached for r in again) and [r.key for r in again] == \
        [r.key for r in runs["int4"]]


def test_the_decoder_graph_layout_is_in_the_export_key(compiled) -> None:  # type: ignore[no-untyped-def]
    from trtflow.llm import stages
    from trtflow.llm.fused_graph import GRAPH_VERSION

    ctx, _ = compiled  # a new fused layout must not be served the old graph from the store
    assert stages._export_facts(ctx, None)["graph"] == GRAPH_VERSION


def test_decoder_validation_is_an_engine_validation_report(compiled) -> None:  # type: ignore[no-untyped-def]
    _, runs = compiled
    fp32 = ValidationReport.of(runs["fp32"][-1])
    int4 = ValidationReport.of(runs["int4"][-1])
    assert fp32.decoder is not None and int4.decoder is not None
    assert fp32.decoder.perplexity_increase == 0.0 and fp32.quality.agreement == 1.0
    assert fp32.decoder.greedy_agreement == 1.0
    assert int4.decoder.reference_perplexity == pytest.approx(fp32.decoder.perplexity)
    assert int4.quality.metric == "top1" and not int4.quality.labelled
    assert [r.batch_size for r in int4.latency.engine] == [1, 2] == \
        [s.batch_size for s in int4.decoder.speed]
    gates = {d.gate for d in int4.gates.decisions}
    assert gates == {"min_agreement", "min_greedy_agreement"} and int4.passed
    int8 = ValidationReport.of(runs["int8"][-1])
    assert {d.gate for d in int8.gates.decisions} == {"min_agreement", "max_perplexity_increase"}
    figures = int4.decoder.figures()
    assert {"perplexity", "perplexity_increase", "greedy_agreement",
            "decode_tokens_per_s.bs1", "reference.prefill_tokens_per_s.bs2"} <= set(figures)


def test_registry_judges_a_decoder_by_log_likelihood(compiled) -> None:  # type: ignore[no-untyped-def]
    from trtflow.track.registry import EngineFacts

    _, runs = compiled
    report = ValidationReport.of(runs["int8"][-1])
    assert report.decoder is not None
    facts = EngineFacts.from_report(report, "host", "int8")
    assert facts.quality_metric == "log_likelihood"
    assert facts.quality == pytest.approx(-np.log(report.decoder.perplexity))
    assert facts.drop_vs_fp32 == pytest.approx(np.log1p(report.decoder.perplexity_increase))


def test_decoder_engine_loads_as_an_onnxruntime_engine_with_its_tokenizer(compiled) -> None:  # type: ignore[no-untyped-def]
    from trtflow.backends import load_engine
    from trtflow.llm.cli import _decoder_files

    _, runs = compiled
    engine_dir = Path(runs["int4"][2].path)
    engine = load_engine(engine_dir, threads=1)
    tokenizer, shape = _decoder_files(engine_dir)
    ids = np.asarray([tokenizer("the cat sat")["input_ids"]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "position_ids": np.arange(ids.shape[1])[None]}
    feeds.update({n: np.zeros((1, shape.kv_heads, 0, shape.head_dim), np.float32)
                  for n in engine.input_names if n.startswith("past_")})
    logits = engine.run(feeds)["logits"]
    assert logits.shape == (1, ids.shape[1], shape.vocab)
    assert runs["int4"][2].report["backend"] == "onnxruntime-cpu"


def test_llm_params_read_the_decoder_form_for_the_compiler(tmp_path: Path) -> None:
    from trtflow.llm.config import load_llm_params

    llm = load_llm_params(project(tmp_path))
    assert llm.model.source == "model" and llm.evaluation.batch_sizes == [1, 2]
    assert llm.targets["int4"].method == "awq" and llm.targets["int8"].symmetric
    assert llm.targets["int8"].gates.max_perplexity_increase == 0.5


def test_gguf_that_is_not_a_decoder_fails_preflight_and_stores_nothing(tmp_path: Path) -> None:
    path = project(tmp_path, PARAMS.replace("decoder: model", "decoder: encoder.gguf"))
    write_gguf(tmp_path / "encoder.gguf", "bert", tokenizer=True)
    ctx = Context.create(load_params(path), tmp_path)
    with pytest.raises(ModelError, match=r"encoder\.gguf: GGUF architecture 'bert' is not a "
                       "decoder"):
        run_up_to(ctx, "validate", "int4")
    assert stored_files(tmp_path) == []


def test_missing_tokenizer_fails_preflight_naming_the_folder(tmp_path: Path) -> None:
    ctx = Context.create(load_params(project(tmp_path, tokenizer=False)), tmp_path)
    with pytest.raises(ModelError, match=r"model: tokenizer missing"):
        preflight(ctx)
    with pytest.raises(ModelError, match="tokenizer missing"):
        run_up_to(ctx, "export")
    assert stored_files(tmp_path) == []


def test_non_utf8_text_fails_preflight_naming_the_file(tmp_path: Path) -> None:
    ctx = Context.create(load_params(project(tmp_path)), tmp_path)
    (tmp_path / "data" / "evaluation.txt").write_bytes(b"the cat \xff sat")
    with pytest.raises(DataError, match=r"evaluation\.txt: not UTF-8 text \(byte 0xff at "
                       "offset 8\\)"):
        run_up_to(ctx, "validate", "fp32")
    assert stored_files(tmp_path) == []


def test_prompt_longer_than_the_context_fails_preflight(tmp_path: Path) -> None:
    params = PARAMS.replace("prompt_tokens: 8", "prompt_tokens: 45")  # the context is 48
    ctx = Context.create(load_params(project(tmp_path, params)), tmp_path)
    with pytest.raises(DataError, match=r"validate\.decoder\.prompt_tokens of tiny: 45 tokens "
                       r"\+ 6 new tokens exceed the model's context of 48"):
        run_up_to(ctx, "validate", "fp32")
    assert stored_files(tmp_path) == []


def test_group_size_that_does_not_divide_the_hidden_size_fails_preflight(tmp_path: Path) -> None:
    params = PARAMS.replace("weight_only: {method: awq,", "weight_only: {method: awq, "
                            "group_size: 128,")  # the tiny decoder's hidden size is 64
    ctx = Context.create(load_params(project(tmp_path, params)), tmp_path)
    with pytest.raises(CalibrationError, match=r"model: hidden size 64 is not a multiple of "
                       r"targets\.int4\.weight_only\.group_size 128; expected a group size "
                       r"that divides it \(\[16, 32, 64\]\)"):
        run_up_to(ctx, "validate", "fp32")  # any run of these params: checked up front
    assert stored_files(tmp_path) == []


def test_a_finetuned_decoder_is_another_export_trained_on_the_calibration_text(
        tmp_path: Path) -> None:
    finetuned = PARAMS.replace("source: {decoder: model}", "source: {decoder: model, finetune: "
                               "{steps: 2, batch: 2, window: 8, seed: 0}}")
    plain = run_up_to(Context.create(load_params(project(tmp_path)), tmp_path), "export")[-1]
    (tmp_path / "p.yaml").write_text(finetuned)
    tuned = run_up_to(Context.create(load_params(tmp_path / "p.yaml"), tmp_path), "export")[-1]
    assert tuned.key != plain.key and tuned.report["finetune"]["steps"] == 2
    assert "finetune" not in plain.report
    (tmp_path / "data" / "calibration.txt").write_text(" ".join(WORDS[::-1] * 30))
    retrained = run_up_to(Context.create(load_params(tmp_path / "p.yaml"), tmp_path),
                          "export")[-1]
    assert retrained.key != tuned.key  # its key covers the text it trained on


def test_gptq_with_int8_projections_through_the_calibrate_step(tmp_path: Path) -> None:
    params = PARAMS.replace("weight_only: {method: awq, lm_head_group_size: 32}",
                            "weight_only: {method: gptq, lm_head_group_size: 32, "
                            "int8_projections: [down_proj, layers.-1], int8_group_size: 32}")
    ctx = Context.create(load_params(project(tmp_path, params)), tmp_path)
    calibrate = run_up_to(ctx, "calibrate", "int4")[-1]
    settings = json.loads((Path(calibrate.path) / "weight_only.json").read_text())
    assert settings["config"]["method"] == "gptq"
    assert settings["config"]["int8_projections"] == ["down_proj", "layers.-1"]
    from trtflow.llm import stages

    assert "calibration_data" in stages._calibrate_facts(ctx, "int4")  # GPTQ reads the text
