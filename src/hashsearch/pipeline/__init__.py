"""Files -> features -> codes -> a collection: the steps that chain the stages."""

from hashsearch.pipeline.build import IndexReport, add_images, build_collection, encode_queries

__all__ = ["IndexReport", "add_images", "build_collection", "encode_queries"]
