"""SwinIR feature extractor (upsampler 'none', as LTE uses it), with the published keys.

Module and buffer names follow the published SwinIR so its checkpoints load strictly,
including the buffers ``relative_position_index`` and ``attn_mask``. The published
``attn_mask`` is built for ``img_size`` (48 in training); for any other feature size the mask
is recomputed, once per forward and shared by every shifted block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .bounds import BOOL, Bound, conv_numbers, int_bound, real_bound
from .traits import EncoderTraits, conv_radius

# Windows of overlap added around SwinIR tiles (asked for explicitly; never exact).
SEAM_WINDOWS = 4


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of random samples, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module form of :func:`drop_path`."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(
    windows: torch.Tensor, window_size: int, height: int, width: int
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws, ws, C) -> (B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window_size, width // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """``(ws*ws, ws*ws)`` int64 index into the ``(2ws-1)^2`` relative position bias table."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Attention mask ``(nW, ws*ws, ws*ws)`` of shifted windows: -100 between tokens that
    came from different regions of the cyclically shifted map, 0 elsewhere (as published)."""
    region = torch.zeros((1, height, width, 1), device=device)
    bands = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    label = 0
    for rows in bands:
        for cols in bands:
            region[:, rows, cols, :] = label
            label += 1
    windows = window_partition(region, window_size).view(-1, window_size * window_size)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class Mlp(nn.Module):
    """Transformer feed-forward: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(
        self, dim: int, window_size: int, num_heads: int, qkv_bias: bool, qk_scale: float | None
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x (B*nW, N, C)``; ``mask (nW, N, N)`` or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            attn = attn.view(bw // n_windows, n_windows, self.num_heads, n, n)
            attn = (attn + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention and MLP, each with a pre-norm residual."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = None
        if shift_size > 0:
            mask = shifted_window_mask(*input_resolution, window_size, shift_size)
        self.register_buffer("attn_mask", mask)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], size_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``x (B, H*W, C)``; ``size_mask`` replaces the stored mask when the size differs
        from the one it was built for."""
        h, w = x_size
        b, _, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = self.attn_mask if size_mask is None else size_mask
        else:
            mask = None
        windows = window_partition(x, self.window_size).view(-1, self.window_size**2, c)
        windows = self.attn(windows, mask).view(-1, self.window_size, self.window_size, c)
        x = window_reverse(windows, self.window_size, h, w)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stack of Swin blocks alternating plain and shifted windows."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop_path: Sequence[float],
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim,
                    input_resolution,
                    num_heads,
                    window_size,
                    shift_size=0 if i % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop_path=drop_path[i],
                )
                for i in range(depth)
            ]
        )

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], size_mask: torch.Tensor | None
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, x_size, size_mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer block: a Swin layer, a 3x3 convolution, a skip."""

    def __init__(self, dim: int, **layer_args) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, **layer_args)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(
        self, x: torch.Tensor, x_size: tuple[int, int], size_mask: torch.Tensor | None
    ) -> torch.Tensor:
        y = self.residual_group(x, x_size, size_mask)
        y = self.conv(tokens_to_map(y, x_size))
        return y.flatten(2).transpose(1, 2) + x


class PatchEmbed(nn.Module):
    """Feature map to tokens (patch size 1), then LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


def tokens_to_map(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """``(B, H*W, C) -> (B, C, H, W)``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


class SwinIR(nn.Module):
    """SwinIR without a reconstruction tail: ``(B, 3, h, w) -> (B, 64, h', w')``.

    The input is reflect-padded at the bottom and right to a multiple of ``window_size``
    and the output is NOT cropped back (h' = ceil(h / ws) * ws), as published; LTE builds
    its feature grid from the feature map's own size, so the padding stays consistent.

    The published ``swinir`` constructor takes only ``no_upsampling`` and builds the default
    SwinIR; the size arguments are extensions with the published defaults. ``img_size`` only
    fixes the shape of the stored ``attn_mask`` buffers (36 windows at 48).
    """

    arg_bounds: ClassVar[dict[str, Bound]] = {
        "no_upsampling": BOOL,
        "img_size": int_bound(2, 1024),
        "embed_dim": int_bound(1, 4096),
        "depths": Bound("int-list", 1, 256),
        "num_heads": Bound("int-list", 1, 256),
        "window_size": int_bound(1, 64),
        "mlp_ratio": real_bound(1e-3, 64),
        "qkv_bias": BOOL,
        "qk_scale": real_bound(0, 1e6, True),
        "drop_path_rate": real_bound(0, 1),
    }
    OUT_DIM = 64  # the last convolution's fixed width

    def __init__(
        self,
        no_upsampling: bool = True,
        img_size: int = 48,
        embed_dim: int = 180,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_path_rate: float = 0.1,
    ) -> None:
        if not no_upsampling:
            raise ValueError("swinir is only an LTE encoder here: no_upsampling must be True")
        super().__init__()
        if img_size <= window_size:
            # The published code then shrinks the window to img_size, which breaks on larger inputs.
            raise ValueError(f"img_size ({img_size}) must exceed window_size ({window_size})")
        if len(depths) != len(num_heads):
            raise ValueError(
                f"depths {list(depths)} and num_heads {list(num_heads)} lengths differ"
            )
        self.window_size = window_size
        self.patches_resolution = (img_size, img_size)
        self.out_dim = self.OUT_DIM
        self.conv_first = nn.Conv2d(3, embed_dim, 3, padding=1)
        self.patch_embed = PatchEmbed(embed_dim)
        # Stochastic depth grows linearly over all blocks of all layers.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        start = 0
        for depth, heads in zip(depths, num_heads):
            self.layers.append(
                RSTB(
                    embed_dim,
                    input_resolution=self.patches_resolution,
                    depth=depth,
                    num_heads=heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop_path=rates[start : start + depth],
                )
            )
            start += depth
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        self.conv_before_upsample = nn.Sequential(
            nn.Conv2d(embed_dim, self.out_dim, 3, padding=1), nn.LeakyReLU(inplace=True)
        )
        self.apply(_init_weights)

    @classmethod
    def out_dim_of(cls, args: dict) -> int:
        """``out_dim`` of the encoder built from ``args``: always :attr:`OUT_DIM`."""
        return cls.OUT_DIM

    @classmethod
    def count_numbers(cls, args: dict, where: str) -> int:
        """Parameters and buffers of the encoder built from ``args`` (bounds checked)."""
        dim, window, size = args["embed_dim"], args["window_size"], args["img_size"]
        depths, heads = list(args["depths"]), list(args["num_heads"])
        if len(depths) != len(heads):
            raise ValueError(
                f"{where}.depths {depths} and {where}.num_heads {heads} differ in length"
            )
        if size <= window or size % window:
            raise ValueError(
                f"{where}.img_size must be a multiple of window_size ({window}) above it, got {size}"
            )
        for i, h in enumerate(heads):
            if dim % h:
                raise ValueError(f"{where}.num_heads[{i}] = {h} does not divide embed_dim {dim}")
        total = conv_numbers(3, dim) + 2 * dim  # conv_first, patch_embed norm
        for depth, h in zip(depths, heads, strict=True):
            total += sum(_block_numbers(args, h, shifted=i % 2 == 1) for i in range(depth))
            total += conv_numbers(dim, dim)
        return total + 2 * dim + conv_numbers(dim, dim) + conv_numbers(dim, cls.OUT_DIM)

    @property
    def traits(self) -> EncoderTraits:
        """Attention reaches across the image: tiles are approximate, and a few windows of
        overlap beyond the convolutions' reach shrink the seams (they do not remove them).
        The input is padded to the window as the published test pads it."""
        radius = conv_radius(self) + SEAM_WINDOWS * self.window_size
        return EncoderTraits(local=False, radius=radius, window=self.window_size)

    def pad_to_window(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad bottom/right so that height and width are multiples of the window."""
        h, w = x.shape[-2:]
        pad_h = (self.window_size - h % self.window_size) % self.window_size
        pad_w = (self.window_size - w % self.window_size) % self.window_size
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The Swin body on a padded map ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        x_size = (x.shape[2], x.shape[3])
        size_mask = None
        if x_size != self.patches_resolution:
            shift = self.window_size // 2
            size_mask = shifted_window_mask(*x_size, self.window_size, shift, device=x.device)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, x_size, size_mask)
        return tokens_to_map(self.norm(x), x_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(self.pad_to_window(x))
        x = self.conv_after_body(self.forward_features(x)) + x
        return self.conv_before_upsample(x)


def _init_weights(module: nn.Module) -> None:
    """Published SwinIR initialisation of Linear and LayerNorm layers."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _block_numbers(args: dict, heads: int, shifted: bool) -> int:
    """Parameters and buffers of one Swin block with ``heads`` heads."""
    dim, window, size = args["embed_dim"], args["window_size"], args["img_size"]
    hidden = int(dim * args["mlp_ratio"])
    attention = (2 * window - 1) ** 2 * heads + window**4 + 3 * dim * dim + dim * dim + dim
    attention += 3 * dim if args["qkv_bias"] else 0
    mlp = dim * hidden + hidden + hidden * dim + dim
    mask = size * size * window * window if shifted and window // 2 > 0 else 0
    return 4 * dim + attention + mlp + mask  # 4 * dim: the two LayerNorms


make_swinir = SwinIR  # the published constructor's name
