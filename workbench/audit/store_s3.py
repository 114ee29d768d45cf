"""``s3://bucket/prefix`` archive store through boto3, for AWS S3 and S3-compatible servers
(MinIO, Ceph, an emulator: ``archive.endpoint_url`` or ``AWS_ENDPOINT_URL_S3``).

Conditional writes are S3's own: ``If-None-Match: *`` creates only an absent key and
``If-Match: ETAG`` replaces only an unchanged one; a lost race is HTTP 412 (or 409
``ConditionalRequestConflict`` while another conditional write to the key is in flight), which
becomes :class:`LostRace`. Credentials come from boto3's usual chain (environment,
profile, instance role), never from the project's files. Requests time out in seconds and are
retried a few times, so an unreachable store is reported quickly, not after minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from workbench.audit.object_store import LostRace, StoreError, redacted

LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    def __init__(self, url: str, endpoint_url: str | None = None):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise StoreError(f"archive.url {redacted(url)}: no bucket (s3://BUCKET/prefix)")
        self.url, self.bucket = redacted(url), parsed.netloc.rsplit("@", 1)[-1]
        self.prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
        self.endpoint_url = endpoint_url
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:
                raise StoreError(f"archive.url {self.url}: an s3:// archive needs boto3 "
                                 f"(pip install 'workbench[s3]')") from exc
            config = Config(connect_timeout=5, read_timeout=30, max_pool_connections=32,
                            retries={"max_attempts": 5, "mode": "standard"})
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _fail(self, exc: Exception, doing: str) -> StoreError:
        """One clear message for a failure of the store (never the credentials)."""
        from botocore import exceptions as errors

        where = f"archive.url {self.url}" + (f" (endpoint {self.endpoint_url})"
                                            if self.endpoint_url else "")
        if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
            return StoreError(f"{where}: no credentials to {doing}: set AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment")
        if isinstance(exc, errors.EndpointConnectionError | errors.ConnectTimeoutError
                      | errors.ReadTimeoutError | errors.ConnectionClosedError):
            return StoreError(f"{where}: cannot reach the store to {doing} ({type(exc).__name__})")
        if isinstance(exc, errors.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StoreError(f"{where}: access denied to {doing} ({code}): the "
                                  f"credentials in the environment may not do this")
            if code == "NoSuchBucket":
                return StoreError(f"{where}: bucket {self.bucket!r} does not exist")
            return StoreError(f"{where}: cannot {doing}: {code}")
        return StoreError(f"{where}: cannot {doing}: {type(exc).__name__}: {exc}")

    @staticmethod
    def _code(exc: Exception) -> str:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code if code else status

    def get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return answer["Body"].read(), answer["ETag"]
        except ClientError as exc:
            if self._code(exc) in MISSING:
                return None
            raise self._fail(exc, f"read {key}") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, f"read {key}") from exc

    def put_new(self, key: str, data: bytes) -> str:
        return self._put(key, data, {"IfNoneMatch": "*"})

    def put(self, key: str, data: bytes, if_match: str | None = None) -> str:
        return self._put(key, data, {"IfMatch": if_match} if if_match else {})

    def _put(self, key: str, data: bytes, condition: dict[str, str]) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key,
                                            Body=data, **condition)
            return str(answer["ETag"])
        except ClientError as exc:
            if condition and self._code(exc) in LOST_RACE:
                raise LostRace(key) from exc
            raise self._fail(exc, f"write {key}") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, f"write {key}") from exc

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        if start_after:
            arguments["StartAfter"] = self.prefix + start_after
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**arguments):
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix):]
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, f"list {prefix}") from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, f"delete {key}") from exc
