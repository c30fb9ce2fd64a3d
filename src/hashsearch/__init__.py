"""hashsearch: content-based image retrieval with learned binary hash codes."""

__version__ = "0.1.0"
