"""Files -> features, end to end (`steps`: the step list; `local` and `ray_engine`: the engines
that schedule it; `cache`: the feature cache), and the calls that chain the stages into a
collection (`build`)."""

__all__ = ["IndexReport", "add_images", "build_collection", "extract_queries"]


def __getattr__(name: str):
    # Loaded on first use: the Ray actors import `hashsearch.pipeline.ray_engine` and
    # `.steps` only, and should not pay for the hashers, indexes and SciPy that `build` loads.
    if name in __all__:
        from hashsearch.pipeline import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
