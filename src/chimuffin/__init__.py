"""chimuffin: reproducible, data-centric Chihuahua-vs-Muffin classification."""

__version__ = "0.1.0"
