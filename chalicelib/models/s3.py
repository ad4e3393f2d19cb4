"""S3 locations parsed as URLs, not matched as strings.

`SourceS3Path` names the script that AWS-RunRemoteScript downloads and runs as root, so it
is read the way a URL parser would read it, and anything a parser might read otherwise
is refused: dot segments (`scripts/../other/x.sh`), percent-encoding (`%2e%2e`), user
info, a port, a query, a fragment, backslashes, empty segments, non-ASCII text. Accepted
forms (AWS's own, https://docs.aws.amazon.com/AmazonS3/latest/userguide/VirtualHosting.html):

- `s3://bucket/key`
- virtual-hosted: `https://bucket.s3.amazonaws.com/key`, `https://bucket.s3.REGION.amazonaws.com/key`,
  `https://bucket.s3-REGION.amazonaws.com/key` (legacy), `.s3.dualstack.REGION.`, and
  `.amazonaws.com.cn` in the China regions
- path-style: `https://s3.amazonaws.com/bucket/key` and the same regional forms

The allow list (`PREPOST_ALLOWED_SCRIPT_SOURCES`) is parsed the same way, and a location
is under an allowed prefix only when its bucket is that bucket and its key continues the
prefix at a `/` boundary (`scripts/` allows `scripts/x.sh`, not `scripts-old/x.sh`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# S3 bucket naming rules: 3-63 lowercase letters, digits, dots and hyphens, beginning and
# ending with a letter or digit (https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html).
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_BUCKET = re.compile(rf"^{BUCKET}$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
_ENDPOINT = rf"s3(?:\.dualstack)?(?:[.-]{_REGION})?\.amazonaws\.com(?:\.cn)?"
_BUCKET_IN_HOST = re.compile(rf"^(?P<bucket>{BUCKET})\.{_ENDPOINT}$")
_PATH_STYLE = re.compile(rf"^{_ENDPOINT}$")
# Key segments: letters, digits and `_ . -` only (a key needing anything else would need
# percent-encoding in the URL, which is refused).
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")
_URL = re.compile(r"^(?P<scheme>s3|https)://(?P<host>[^/]*)(?P<path>/.*)?$")


class S3LocationError(ValueError):
    """Not an S3 location this deployment will read; the message says why."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # without a leading `/`; for a prefix, without a trailing one

    @property
    def file_name(self) -> str:
        """The last segment of the key: the name the script is downloaded under."""
        return self.key.rsplit("/", 1)[-1]

    def is_under(self, prefix: S3Location) -> bool:
        """Whether this object lies in `prefix`'s bucket, under its key at a `/` boundary."""
        if self.bucket != prefix.bucket:
            return False
        return not prefix.key or self.key.startswith(prefix.key + "/")

    @classmethod
    def parse(cls, text: str, prefix: bool = False) -> S3Location:
        """The bucket and key of an S3 URL or URI. An object's key must name a file;
        a `prefix` may name a bucket alone or end with `/`."""
        if not text.isascii() or not text.isprintable():
            raise S3LocationError("must be printable ASCII text")
        for character, why in (
            ("%", "percent-encoding"),
            ("?", "a query"),
            ("#", "a fragment"),
            ("\\", "a backslash"),
            (" ", "a space"),
        ):
            if character in text:
                raise S3LocationError(f"must not contain {why} ({character!r})")
        match = _URL.match(text)
        if match is None:
            raise S3LocationError("must be an https:// URL of an S3 object or an s3:// URI")
        scheme, host, path = match["scheme"], match["host"], match["path"] or ""
        if "@" in host:
            raise S3LocationError("must not contain user info ('@' before the host)")
        if ":" in host:
            raise S3LocationError("must not name a port")
        segments = path.split("/")[1:]  # the path begins with `/` when it is not empty
        if scheme == "s3":
            bucket = host
        elif hosted := _BUCKET_IN_HOST.match(host.lower()):
            bucket = hosted["bucket"]
        elif _PATH_STYLE.match(host.lower()):
            if not segments or not segments[0]:
                raise S3LocationError("a path-style URL must name the bucket after the host")
            bucket, segments = segments[0], segments[1:]
        else:
            raise S3LocationError(f"{host!r} is not an Amazon S3 endpoint")
        if not _BUCKET.match(bucket) or ".." in bucket or _IP_ADDRESS.match(bucket):
            raise S3LocationError(f"{bucket!r} is not a valid S3 bucket name")
        if prefix and segments and segments[-1] == "":
            segments = segments[:-1]  # `bucket/scripts/` is the prefix `scripts`
        if segments == [""]:
            segments = []
        for segment in segments:
            if segment in (".", ".."):
                raise S3LocationError(f"must not contain the dot segment {segment!r}")
            if not _SEGMENT.match(segment):
                raise S3LocationError(
                    f"key segment {segment!r} may hold only letters, digits and _ . -"
                    if segment
                    else "must not contain an empty segment ('//') or end with '/'"
                )
        if not prefix and not segments:
            raise S3LocationError("must name an object (a key after the bucket)")
        return cls(bucket=bucket, key="/".join(segments))
