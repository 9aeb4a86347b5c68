"""BrainLM's released ViT-MAE models (111M, 650M) through ``transformers``' ``ViTMAEForPreTraining``
(the optional extra ``fmriflow[transformers]``), with the authors' image layout around it.

The authors feed a window of region series as an image: regions sorted by their MNI y coordinate
(ascending, ties in atlas order) as rows, time as columns, the same values in 3 channels, padded
with -1 on every side (half each side) to the square ``image_size`` of the config (432 for patch
16, 434 for patch 14). The reconstruction is cropped back and averaged over the channels.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

PAD_VALUE = -1.0  # the authors' padding around the region x time image
EXTRA = "transformers"  # pip install 'fmriflow[transformers]'


def vitmae_classes():
    try:
        from transformers import ViTMAEConfig, ViTMAEForPreTraining
    except ImportError as exc:
        raise ImportError(f"BrainLM's ViT-MAE models need the optional extra: pip install 'fmriflow[{EXTRA}]' "
                          f"({exc})") from exc
    return ViTMAEConfig, ViTMAEForPreTraining


def y_order(coords: np.ndarray) -> np.ndarray:
    """Row order of the image: regions by ascending y, ties in atlas order (a stable sort)."""
    return np.argsort(np.asarray(coords)[:, 1], kind="stable")


class BrainLMViTMAE(nn.Module):
    """``config``: the release's ``config.json`` fields of a ``ViTMAEConfig``; ``coords`` (R, 3) MNI xyz in
    atlas order (they fix the image's row order). Input ``(B, R, T)`` in atlas order."""

    def __init__(self, config: dict, coords, pool: str = "cls"):
        super().__init__()
        ViTMAEConfig, ViTMAEForPreTraining = vitmae_classes()
        self.hf_config = dict(config)
        self.pool = pool
        self.mae = ViTMAEForPreTraining(ViTMAEConfig(**self.hf_config))
        # what fmriflow's other encoders expose (the embedding width, the pooling); the architecture is hf_config
        self.config = SimpleNamespace(hidden=self.mae.config.hidden_size, pool=pool)
        coords = np.asarray(coords, dtype=np.float32)
        self.n_regions = coords.shape[0]
        self.register_buffer("coords", torch.from_numpy(coords.copy()))
        self.register_buffer("region_order", torch.from_numpy(y_order(coords)))
        size = self.mae.config.image_size
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    def image(self, x: Tensor) -> Tensor:
        """``(B, R, T)`` -> ``(B, C, H, W)``: rows by y, channels repeated, padded with -1."""
        B, R, T = x.shape
        H, W = self.image_size
        if R != self.n_regions or (H - R) % 2 or (W - T) % 2 or R > H or T > W:
            raise ValueError(f"'x' must have {self.n_regions} regions and a length that pads evenly to the "
                             f"image {H}x{W}; got {tuple(x.shape)}")
        rows = x[:, self.region_order][:, None].expand(-1, self.mae.config.num_channels, -1, -1)
        return F.pad(rows, ((W - T) // 2,) * 2 + ((H - R) // 2,) * 2, value=PAD_VALUE)

    @contextlib.contextmanager
    def _mask_ratio(self, ratio: float | None):
        saved = self.mae.vit.embeddings.config.mask_ratio
        if ratio is not None:
            self.mae.vit.embeddings.config.mask_ratio = ratio
        try:
            yield
        finally:
            self.mae.vit.embeddings.config.mask_ratio = saved

    def forward_features(self, x: Tensor, mask_ratio: float = 0.0, noise: Tensor | None = None):
        """The encoder's ``last_hidden_state`` (B, 1+K, hidden), ``mask`` (B, L) and ``ids_restore``; with no
        masking and no ``noise`` the tokens keep their order (the library would shuffle them)."""
        if mask_ratio == 0.0 and noise is None:
            n_patches = self.mae.vit.embeddings.patch_embeddings.num_patches
            noise = torch.arange(n_patches, dtype=torch.float32, device=x.device).expand(x.shape[0], -1)
        with self._mask_ratio(mask_ratio):
            out = self.mae.vit(self.image(x), noise=noise)
        return out.last_hidden_state, out.mask, out.ids_restore

    def forward(self, x: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None):
        """Masked pass: ``(pred (B, R, T) in atlas order, mask (B, R, T), latent)``, cropped and channel-averaged."""
        B, R, T = x.shape
        H, W = self.image_size
        with self._mask_ratio(mask_ratio):
            out = self.mae.vit(self.image(x), noise=noise)
        logits = self.mae.decoder(out.last_hidden_state, out.ids_restore).logits  # (B, L, p*p*C)
        width = logits.shape[-1]
        pred = self.mae.unpatchify(logits, original_image_size=(H, W))  # (B, C, H, W)
        mask = self.mae.unpatchify(out.mask[..., None].expand(-1, -1, width), original_image_size=(H, W))
        h0, w0 = (H - R) // 2, (W - T) // 2
        crop = (slice(None), slice(None), slice(h0, h0 + R), slice(w0, w0 + T))
        inverse = torch.argsort(self.region_order)
        pred, mask = pred[crop].mean(dim=1)[:, inverse], mask[crop].mean(dim=1)[:, inverse]  # (B, R, T)
        return pred, mask, out.last_hidden_state

    def encode(self, x: Tensor) -> Tensor:
        """``(B, hidden)``: the CLS token (as the authors' tutorial) or the mean of the patch tokens, no masking."""
        features = self.forward_features(x)[0]
        return features[:, 0] if self.pool == "cls" else features[:, 1:].mean(dim=1)
