"""Prints, as JSON, every trace an MLflow server holds for one experiment: its id, metadata and
tags, and its spans (name, MLflow span type, ids, parent, attributes). Used by
tests/it/agent.rs to check what `millstream agent` exported over OTLP.

usage: mlflow_traces.py TRACKING_URI EXPERIMENT_ID
"""

import json
import sys

import mlflow


def main() -> None:
    uri, experiment = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri(uri)
    out = []
    for trace in mlflow.search_traces(experiment_ids=[experiment], return_type="list"):
        spans = []
        for s in trace.data.spans:
            spans.append(
                {
                    "name": s.name,
                    "type": s.span_type,
                    "span_id": s.span_id,
                    "parent_id": s.parent_id,
                    "attributes": {k: str(v) for k, v in (s.attributes or {}).items()},
                }
            )
        out.append(
            {
                "trace_id": trace.info.trace_id,
                "metadata": dict(trace.info.trace_metadata or {}),
                "tags": dict(trace.info.tags or {}),
                "spans": spans,
            }
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
