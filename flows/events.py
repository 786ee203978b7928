"""trtflow's Prefect events, and the trigger that turns them into compiles.

Two events, both about the model whose compile they request:

- `trtflow.model.registered`: a model version landed in the MLflow registry
  (the retrain flow emits it; `trtflow trigger MODEL` emits it by hand);
- `trtflow.dataset.updated`: a data set the model's compile reads changed
  (`trtflow trigger MODEL --dataset PATH`).

The resource is the model, `trtflow.model.<name>`; the payload carries the
registered version and the params file. The label `trtflow.compile` says who
compiles: `requested` (the `compile-on-new-version` deployment should) or
`inline` (the emitter compiles it itself, as retrain does, so the event only
informs). The deployment's trigger matches `requested` only; without that, every
retrain would compile the same version twice.
"""

from __future__ import annotations

from typing import Any

MODEL_REGISTERED = "trtflow.model.registered"
DATASET_UPDATED = "trtflow.dataset.updated"
ENGINE_REGISTERED = "trtflow.engine.registered"
RESOURCE_PREFIX = "trtflow.model."
COMPILE_LABEL = "trtflow.compile"


def model_resource(model: str, compile_mode: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{model}", "prefect.resource.name": model,
            "trtflow.model": model, COMPILE_LABEL: compile_mode}


def emit_compile_request(event: str, model: str, *, version: str = "", params_path: str = "",
                         dataset: str = "", targets: str = "", compile_mode: str = "requested",
                         extra: dict[str, Any] | None = None) -> Any:
    """Emit one trtflow event to the configured Prefect API; returns the Event (or None
    when Prefect has no API to send it to)."""
    from prefect.events import emit_event

    related = []
    if version:
        related.append({"prefect.resource.id": f"mlflow.model-version.{model}.{version}",
                        "prefect.resource.role": "model-version"})
    if dataset:
        related.append({"prefect.resource.id": f"trtflow.dataset.{dataset}",
                        "prefect.resource.role": "dataset"})
    payload = {"model": model, "version": version, "params_path": params_path,
               "dataset": dataset, "targets": targets, **(extra or {})}
    return emit_event(event=event, resource=model_resource(model, compile_mode),
                      related=related, payload=payload)


def compile_trigger() -> Any:
    """The `compile-on-new-version` deployment's trigger: any requested-compile event for any
    model; its fields become the flow run's parameters (strings, rendered by Prefect)."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="compile when a model version or data set appears",
        expect={MODEL_REGISTERED, DATASET_UPDATED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*", COMPILE_LABEL: "requested"},
        parameters={
            "model": "{{ event.resource['trtflow.model'] }}",
            "version": "{{ event.payload.version }}",
            "params_path": "{{ event.payload.params_path }}",
            "targets": "{{ event.payload.targets }}",
            "reason": "{{ event.event }} {{ event.payload.dataset }}",
        },
    )
