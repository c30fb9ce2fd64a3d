"""Image sources (folder, tar archive, list file), safe decoding, and named split protocols."""

from hashsearch.data.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    check_image_bytes,
    decode_image,
    sniff_format,
)
from hashsearch.data.protocols import (
    Split,
    cache_dir,
    cifar10_archive,
    cifar10_root,
    list_protocols,
    load_protocol,
    split_by_class,
)
from hashsearch.data.sources import (
    IMAGE_EXTENSIONS,
    BadImageWarning,
    FolderSource,
    ImageRecord,
    ImageSource,
    ListSource,
    SkipReport,
    TarSource,
    count_labels,
    iter_images,
    open_source,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "BadImageWarning",
    "DecodeError",
    "FolderSource",
    "ImageRecord",
    "ImageSource",
    "ListSource",
    "SkipReport",
    "Split",
    "TarSource",
    "cache_dir",
    "check_image_bytes",
    "cifar10_archive",
    "cifar10_root",
    "count_labels",
    "decode_image",
    "iter_images",
    "list_protocols",
    "load_protocol",
    "open_source",
    "sniff_format",
    "split_by_class",
]
