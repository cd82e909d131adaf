"""advlab: generative models, adversarial attacks and honestly evaluated defenses, on PyTorch."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``advlab.wrap``, imported on first use (``import advlab`` stays free of torch, so the
    command line starts fast)."""
    if name == "wrap":
        from advlab.wrapping import wrap

        return wrap
    raise AttributeError(f"module 'advlab' has no attribute {name!r}")
