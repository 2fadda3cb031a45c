"""An S3-compatible server for the cluster tests: moto's, on a free port of 127.0.0.1.

    python s3_server.py BUCKET...

Creates the buckets, prints one JSON line {"endpoint": "http://127.0.0.1:PORT"}, and serves until
its stdin closes (the test that started it exited or dropped it), so it never outlives the test.
Moto honours conditional puts (If-None-Match: *), which concurrent Delta writers rely on.
"""

import json
import logging
import sys

import boto3
from moto.server import ThreadedMotoServer


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="millstream-test",
        aws_secret_access_key="millstream-test-secret",
        region_name="us-east-1",
    )
    for bucket in sys.argv[1:]:
        s3.create_bucket(Bucket=bucket)
    print(json.dumps({"endpoint": endpoint}), flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
