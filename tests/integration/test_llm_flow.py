"""A decoder through `trtflow run` as a user runs it: the real Prefect flow, MLflow on
sqlite, the registry, then `trtflow publish` / `fetch` against a moto S3 server and
`trtflow generate` on the fetched engine. A tiny seeded Llama stands in for SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ..unit.test_llm_flow import PARAMS, project

pytestmark = pytest.mark.integration


def test_a_decoder_compiles_registers_publishes_and_generates(
        moto_endpoint: str, tmp_path: Path) -> None:
    import mlflow

    from trtflow.track.publish import s3_client

    model = f"dec{uuid.uuid4().hex[:6]}"  # its own experiment and registered models
    params = project(tmp_path, PARAMS.replace("name: tiny", f"name: {model}"))
    bucket = f"engines-{uuid.uuid4().hex[:8]}"
    s3_client().create_bucket(Bucket=bucket)
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": moto_endpoint}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trtflow.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600, env=env,
                              check=False)

    compiled = cli("run", str(params))
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    out = " ".join(compiled.stdout.split())
    for target in ("fp32", "int8", "int4"):
        assert f"{target}: registered {model}-{target} v1" in out
    assert "ppl" in out and "no labels" not in out  # the summary shows perplexity

    client = mlflow.MlflowClient()
    runs = {r.data.tags["trtflow.target"]: r for r in client.search_runs(
        [mlflow.get_experiment_by_name(model).experiment_id], "tags.`trtflow.target` LIKE '%'")}
    int4 = runs["int4"]
    for metric in ("perplexity", "perplexity_increase", "greedy_agreement", "agreement",
                   "decode_tokens_per_s.bs1", "engine.bs1.p50_ms", "speedup.bs1"):
        assert metric in int4.data.metrics, metric
    assert int4.data.params["engine.precision"] == "int4"
    artifacts = {a.path for a in client.list_artifacts(int4.info.run_id, "calibration")}
    assert "calibration/weight_only.json" in artifacts
    version = client.get_model_version(f"{model}-int4", "1")
    assert version.tags["trtflow.quality_metric"] == "log_likelihood"
    assert version.tags["trtflow.promotion"] in ("promoted", "refused")

    published = cli("publish", str(params), "-t", "int4", "--bucket", bucket, "--version", "1")
    assert published.returncode == 0, published.stderr
    fetched = cli("fetch", model, "1", str(tmp_path / "engine"), "--bucket", bucket)
    assert fetched.returncode == 0, fetched.stderr
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert set(manifest["metadata"]["stages"]) == {"export", "calibrate", "build", "validate"}
    assert manifest["metadata"]["quality"]["decoder"]["perplexity"] == pytest.approx(
        int4.data.metrics["perplexity"])
    text = cli("generate", str(tmp_path / "engine"), "--prompt", "the cat sat on",
               "--max-new-tokens", "4")
    assert text.returncode == 0, text.stderr  # the random model's words may be unknown
    assert "engine: prefill 4 tokens" in text.stderr  # ids: its text can be empty
