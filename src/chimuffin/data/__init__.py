"""Datasets: scanning, decoding and splitting images, the manifest, the embedded sample."""
