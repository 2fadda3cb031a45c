"""Prints, as JSON, what an MLflow server holds for one evaluation run: its status, tags,
params, metrics, dataset inputs, artifacts (with the results table), and the traces linked to
it with their assessments. Used by tests/it/agent.rs to check `millstream eval agent --mlflow`.

usage: mlflow_eval_run.py TRACKING_URI RUN_ID
"""

import json
import sys

import mlflow
from mlflow import MlflowClient


def main() -> None:
    uri, run_id = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    artifacts = [f.path for f in client.list_artifacts(run_id)]
    table = None
    if "eval_results_table.json" in artifacts:
        with open(client.download_artifacts(run_id, "eval_results_table.json")) as f:
            table = json.load(f)
    traces = []
    for t in mlflow.search_traces(
        locations=[run.info.experiment_id], run_id=run_id, return_type="list"
    ):
        traces.append(
            {
                "trace_id": t.info.trace_id,
                "metadata": dict(t.info.trace_metadata or {}),
                "assessments": [
                    {
                        "name": a.name,
                        "value": a.value,
                        "source": a.source.source_type,
                        "rationale": a.rationale,
                        "metadata": dict(a.metadata or {}),
                    }
                    for a in t.info.assessments
                ],
            }
        )
    json.dump(
        {
            "status": run.info.status,
            "tags": dict(run.data.tags),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
            "inputs": [
                {
                    "name": d.dataset.name,
                    "digest": d.dataset.digest,
                    "profile": d.dataset.profile,
                    "context": {tag.key: tag.value for tag in d.tags}.get(
                        "mlflow.data.context"
                    ),
                }
                for d in run.inputs.dataset_inputs
            ],
            "artifacts": artifacts,
            "table": table,
            "traces": traces,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
