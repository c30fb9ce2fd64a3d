"""Files -> features -> codes -> a collection: the steps that chain the stages."""

__all__ = ["IndexReport", "add_images", "build_collection", "encode_queries"]


def __getattr__(name: str):
    # Loaded on first use: the Ray actors import `hashsearch.pipeline.ray_engine` and
    # `.workers` only, and should not pay for the hashers, indexes and SciPy that `build` loads.
    if name in __all__:
        from hashsearch.pipeline import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
