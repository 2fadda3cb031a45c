"""Independent reader for millstream's Delta tables, using the Python `deltalake` package.

Usage: read_delta.py LAKEHOUSE_ROOT TABLE...
Prints one JSON object: for every table named (schema.table), the latest version, row count,
distinct event ids, and the Change Data Feed from version 0 split by change type.
"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

def read(root: str, name: str) -> dict:
    schema, table = name.split(".")
    dt = DeltaTable(os.path.join(root, schema, table))
    data = dt.to_pyarrow_table()
    report = {
        "version": dt.version(),
        "rows": data.num_rows,
        "cdf_enabled": dt.metadata().configuration.get("delta.enableChangeDataFeed") == "true",
    }
    if "event_id" in data.column_names:
        report["distinct_event_ids"] = len(pc.unique(data["event_id"]))
    changes = pa.table(dt.load_cdf(starting_version=0))
    kinds = changes["_change_type"].to_pylist()
    report["cdf_inserts"] = sum(1 for k in kinds if k == "insert")
    report["cdf_other"] = sum(1 for k in kinds if k != "insert")
    return report


def main() -> None:
    root, tables = sys.argv[1], sys.argv[2:]
    print(json.dumps({name: read(root, name) for name in tables}))


if __name__ == "__main__":
    main()
