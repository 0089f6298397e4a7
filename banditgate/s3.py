"""Upload closed files to S3 (or any S3-compatible store) with boto3: the exporter's
Parquet/DSJSON files and the router's data-capture files.

A file's key mirrors its path below the uploader's root (`{data_dir}/export/`,
`{data_dir}/capture/`), under the URL's prefix. Once uploaded, a hidden marker
`.<name>.uploaded` sits next to the file, so a restart uploads only what is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UPLOADED = ".uploaded"
EXPORTED_SUFFIXES = (".parquet", ".json")


def parse_s3_url(url: str) -> tuple[str, str]:
    rest = url.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


class S3Uploader:
    def __init__(
        self,
        url: str,
        *,
        root: Path,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        pattern: str = "part-*",
        suffixes: tuple[str, ...] = EXPORTED_SUFFIXES,
        setting: str = "BANDITGATE_EXPORT_S3_URL",
    ) -> None:
        """`pattern` and `suffixes`: which files under `root` `missing()` lists; `setting`:
        what to name when boto3 is not installed."""
        self.bucket, self.prefix = parse_s3_url(url)
        self.root = root
        self.pattern = pattern
        self.suffixes = suffixes
        self.client = client or _s3_client(endpoint_url, region, setting)

    def key(self, path: Path) -> str:
        relative = path.relative_to(self.root).as_posix()
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @staticmethod
    def marker(path: Path) -> Path:
        return path.with_name(f".{path.name}{UPLOADED}")

    def upload(self, path: Path) -> bool:
        """Blocking; True once the file is in the bucket (now or before)."""
        marker = self.marker(path)
        if marker.exists():
            return True
        try:
            self.client.upload_file(str(path), self.bucket, self.key(path))
        except Exception as exc:  # boto3 raises many types; the file stays for the next try
            log.warning("upload of %s to s3://%s failed: %s", path, self.bucket, exc)
            return False
        marker.touch()
        return True

    def missing(self) -> list[Path]:
        """Exported files not uploaded yet."""
        if not self.root.exists():
            return []
        return sorted(
            path
            for path in self.root.rglob(self.pattern)
            if path.suffix in self.suffixes and path.is_file() and not self.marker(path).exists()
        )


def _s3_client(endpoint_url: str | None, region: str | None, setting: str) -> Any:
    try:
        import boto3  # the `s3` extra, about 0.3 s to import: only when S3 is configured
    except ImportError:
        raise RuntimeError(f"{setting} needs boto3: pip install 'banditgate[s3]'") from None
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
