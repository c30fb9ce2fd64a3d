"""What one request, and the server as a whole, may cost (`Limits`); light, so the CLI imports it for its defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields

from hashsearch.validation import check_int, check_real

MAX_K = 1000
#: Largest id a route accepts (ids are int64).
MAX_ID = 2**63 - 1
#: Most files one POST /images may carry.
MAX_FILES = 256


@dataclass(frozen=True)
class Limits:
    """What one request, and the server as a whole, may cost. Every field is a positive number.

    Attributes
    ----------
    max_upload_bytes : int
        Largest uploaded file, in bytes (default 20 MiB); counted on the stream, per file.
    max_request_bytes : int
        Largest body of one POST /images, all files together (default 64 MiB); a POST /search
        body may hold one file (`max_upload_bytes` plus 64 KiB of form fields).
    max_pixels : int
        Largest width * height of an image added through the API: the indexer's limit and
        default (`hashsearch.data.decode.DEFAULT_MAX_PIXELS`, 64 megapixels; equal, tested).
    max_query_pixels : int
        Largest width * height of a query image (default 40 megapixels). JPEG queries decode at
        reduced scale (1/2 to 1/8, never below the backbone's input size), as the indexer does.
    decode_slots : int
        Images decoded and their features extracted at once, across all requests and jobs (default 2).
    max_queued : int
        Upload requests (POST /search, POST /images) waiting for a slot beyond those decoding;
        more are refused with 503 and Retry-After before their body is read (default 8).
    max_jobs : int
        Background adds running at once; more get 503 (default 4).
    job_ttl_s : float
        Seconds a finished job stays readable at GET /jobs/{id} (default 900).

    Raises
    ------
    ValueError
        If a field is not a positive number.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_query_pixels: int = 40_000_000
    decode_slots: int = 2
    max_queued: int = 8
    max_jobs: int = 4
    job_ttl_s: float = 900.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "job_ttl_s":
                check_real(f.name, getattr(self, f.name), low=0, low_open=True)
            else:
                check_int(f.name, getattr(self, f.name), low=1)

    @property
    def max_pending_uploads(self) -> int:
        """Upload requests admitted at once: decoding, or queued for a slot."""
        return self.decode_slots + self.max_queued

    def body_limit(self, n_files: int) -> int:
        """Largest request body, in bytes, of a route taking up to `n_files` files (64 KiB for form fields)."""
        return min(self.max_request_bytes, n_files * self.max_upload_bytes) + 64 * 1024
