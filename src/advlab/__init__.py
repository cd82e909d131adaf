"""advlab: generative models, adversarial attacks and honestly evaluated defenses, on PyTorch."""

__version__ = "0.1.0"
