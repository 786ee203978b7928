"""`trtflow report` takes a unique prefix of a run id (tables print ids cut short)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from trtflow.report.runs import ReportError, _get_run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str, list[str]]:
    """A sqlite MLflow store with 20 trtflow runs (pigeonhole: some share a first digit)
    and one run trtflow did not log."""
    root: Path = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("digits", artifact_location=str(root / "artifacts"))
    ids = []
    for i in range(20):
        run = client.create_run(exp, run_name=f"digits compile {i}",
                                tags={"trtflow.model": "digits"})
        client.set_terminated(run.info.run_id)
        ids.append(run.info.run_id)
    client.create_run(exp, run_name="not trtflow")
    return client, uri, ids


def test_a_unique_prefix_finds_the_run(store: tuple[MlflowClient, str, list[str]]) -> None:
    client, uri, ids = store
    for run_id in ids[:5]:
        prefix = next(run_id[:n] for n in range(1, 33)
                      if sum(i.startswith(run_id[:n]) for i in ids) == 1)
        assert _get_run(client, prefix, uri).info.run_id == run_id
        assert _get_run(client, run_id, uri).info.run_id == run_id  # whole ids as before


def test_an_ambiguous_prefix_lists_the_candidates(
        store: tuple[MlflowClient, str, list[str]]) -> None:
    client, uri, ids = store
    digit, count = Counter(i[0] for i in ids).most_common(1)[0]
    assert count >= 2
    with pytest.raises(ReportError, match=rf"prefix '{digit}' matches {count} runs") as err:
        _get_run(client, digit, uri)
    for run_id in (i for i in ids if i.startswith(digit)):
        assert f"{run_id} (digits compile" in str(err.value)
    assert "give more of the id" in str(err.value)


def test_an_unknown_prefix_or_id_says_so(store: tuple[MlflowClient, str, list[str]]) -> None:
    client, uri, ids = store
    absent = next(p for p in (f"{a}{b}{c}" for a in "0123456789abcdef" for b in "0123456789abcdef"
                              for c in "0123456789abcdef")
                  if not any(i.startswith(p) for i in ids))
    with pytest.raises(ReportError, match=rf"run id '{absent}': no trtflow run in .* starting "
                                          "with it"):
        _get_run(client, absent, uri)
    with pytest.raises(ReportError, match=r"run id 'not-an-id': no such MLflow run"):
        _get_run(client, "not-an-id", uri)
