"""Inference: a model over the image cache in batches, predictions over the manifest, predicting
image files, ONNX export, embeddings."""
