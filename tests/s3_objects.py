"""Test helpers shared by the S3 tests: a multipart upload as S3 clients make one, and the
handler tests' bucket on moto's in-memory S3 (no AWS account is reachable from here; the
handlers read and write through boto3 exactly as in Lambda)."""

from __future__ import annotations

import contextlib

import pytest

#: the Lambda handlers' bucket in the handler tests (moto's, fresh for each test)
HANDLER_BUCKET = "handler-test-bucket"


def upload_multipart(client, bucket: str, key: str, parts: list[bytes]) -> bytes:
    """Upload ``parts`` as one multipart object; its whole content."""
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)
    done = []
    for number, data in enumerate(parts, 1):
        part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                  PartNumber=number, Body=data)
        done.append({"PartNumber": number, "ETag": part["ETag"]})
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                     MultipartUpload={"Parts": done})
    return b"".join(parts)


@contextlib.contextmanager
def handler_bucket(monkeypatch, bucket: str, workload: str = "s3keys"):
    """moto's S3 with ``bucket``, and the Lambda handlers' environment naming it."""
    import boto3
    from moto import mock_aws

    from stepmap.aws import handlers
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv(handlers.BUCKET_ENV, bucket)
    monkeypatch.setenv(handlers.WORKLOAD_ENV, workload)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        yield client


@pytest.fixture(name="s3")
def handler_s3(monkeypatch):
    """The handler tests' moto S3 client, with HANDLER_BUCKET (import it to use it)."""
    with handler_bucket(monkeypatch, HANDLER_BUCKET) as client:
        yield client


def read_object(client, key: str) -> bytes:
    return client.get_object(Bucket=HANDLER_BUCKET, Key=key)["Body"].read()


def write_map_run(client, bucket: str, prefix: str, children: list[dict], compute) -> str:
    """A map run's ResultWriter files, as Step Functions writes them: one SUCCEEDED file of
    each child's Input and ``compute(child)`` as its Output, and the manifest (its key)."""
    import json
    entries = [{"Name": f"child-{n}", "Status": "SUCCEEDED", "Input": json.dumps(child),
                "Output": json.dumps(compute(child))}
               for n, child in enumerate(children)]
    body = json.dumps(entries).encode()
    client.put_object(Bucket=bucket, Key=f"{prefix}/SUCCEEDED_0.json", Body=body)
    files = {"SUCCEEDED": [{"Key": f"{prefix}/SUCCEEDED_0.json", "Size": len(body)}],
             "FAILED": [], "PENDING": []}
    client.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json",
                      Body=json.dumps({"DestinationBucket": bucket, "ResultFiles": files}))
    return f"{prefix}/manifest.json"
