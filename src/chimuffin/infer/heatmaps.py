"""Class-activation heatmaps: where in an image the evidence for a class lies, as the model sees
it. Grad-CAM (Captum's LayerGradCam) on the last residual stage (layer4: a 4x4 map for a 128 px
image), upsampled bilinearly to the image, kept positive (relu) and scaled to 0-1 per image.

Images go through the same preprocessing as evaluation (infer/preprocess.py); the target class is
the model's own prediction unless one is given (the report asks for the class a table states).
Computed on the CPU or the model's device, in batches, in eval mode (BatchNorm's running
statistics, no dropout): nothing here trains or changes the model.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from chimuffin.infer.preprocess import preprocess

BATCH = 32  # images per Grad-CAM pass: a forward and a backward pass hold the activations
OVERLAY_ALPHA = 0.45  # the colour map's share of an overlay pixel
COLORMAP = "jet"  # blue (no evidence) to red (the most): the usual Grad-CAM colours


def cam_layer(model: nn.Module) -> nn.Module:
    """The last residual stage: the finest map that still sees whole objects."""
    return model.layer4


def normalise(maps: np.ndarray) -> np.ndarray:
    """(N,H,W) -> each map scaled to 0-1 by its maximum; a map without positive evidence stays 0."""
    maps = np.clip(maps, 0, None).astype(np.float32)
    top = maps.reshape(len(maps), -1).max(axis=1) if len(maps) else np.zeros(0, np.float32)
    scale = np.where(top > 0, top, 1.0).astype(np.float32)
    return maps / scale[:, None, None]


def _batch_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                ) -> tuple[np.ndarray, np.ndarray]:
    from captum.attr import LayerAttribution, LayerGradCam

    with torch.no_grad():
        if target is None:
            target = model(x).argmax(1)
    with torch.enable_grad():
        cam = LayerGradCam(model, cam_layer(model))
        attr = cam.attribute(x, target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return up[:, 0].detach().float().cpu().numpy(), target.cpu().numpy()


def heatmaps(model: nn.Module, images_u8: np.ndarray, targets: np.ndarray | None = None,
             batch_size: int = BATCH, device: torch.device | str = "cpu",
             ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N,3,S,S) -> (heatmaps (N,S,S) float32 in 0-1, the class index each explains).

    `targets`: a class index per image; None = the model's prediction (no flip TTA: the map
    explains this image as it is)."""
    if images_u8.ndim != 4 or images_u8.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N,3,S,S), got shape {images_u8.shape}")
    model.eval()
    n, size = len(images_u8), images_u8.shape[-1]
    maps, explained = np.zeros((n, size, size), np.float32), np.zeros(n, np.int64)
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        x = preprocess(torch.from_numpy(np.ascontiguousarray(images_u8[part])).to(device))
        x = x.contiguous(memory_format=torch.channels_last)
        t = None if targets is None else torch.as_tensor(targets[part], device=device)
        raw, explained[part] = _batch_maps(model, x, t)
        maps[part] = normalise(raw)
    return maps, explained


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H,W) in 0-1 -> (H,W,3) uint8 through the colour map."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.clip(heat, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def overlay(image_hwc: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image (H,W,3 uint8) blended with its coloured heatmap (H,W)."""
    if image_hwc.shape[:2] != heat.shape:
        raise ValueError(f"image {image_hwc.shape[:2]} and heatmap {heat.shape} differ in size")
    blend = (1 - alpha) * image_hwc.astype(np.float32) + alpha * colorize(heat)
    return blend.round().clip(0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array as PNG bytes (no metadata: the same pixels give the same bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def side_by_side(image_hwc: np.ndarray, heat: np.ndarray, caption: str) -> np.ndarray:
    """The image and its overlay side by side, enlarged to about 256 px each (whole pixels),
    the caption below."""
    from PIL import Image, ImageDraw

    h, w = heat.shape
    scale = max(1, 256 // max(h, w))
    pair = np.concatenate([image_hwc, np.full((h, 4, 3), 255, np.uint8),
                           overlay(image_hwc, heat)], axis=1)
    big = Image.fromarray(pair, "RGB").resize((pair.shape[1] * scale, h * scale),
                                              Image.NEAREST)
    canvas = Image.new("RGB", (big.width, big.height + 22), "white")
    canvas.paste(big, (0, 0))
    ImageDraw.Draw(canvas).text((4, big.height + 5), caption, fill="black")
    return np.asarray(canvas)
