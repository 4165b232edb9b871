"""vgs: visually grounded speech — match spoken captions to images, learned from image/speech pairs alone.

Quick start::

    import vgs
    model = vgs.load("runs/scenes")
    S = model.similarity(["photo.jpg"], ["query.wav"])   # 1 x 1 score
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # lazy: `import vgs` stays fast for the CLI
    if name in ("load", "Model", "build_untrained", "evaluate_run", "run_config"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vgs' has no attribute {name!r}")


__all__ = ["load", "Model", "build_untrained", "evaluate_run", "run_config", "__version__"]
