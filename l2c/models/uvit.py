"""U-ViT (Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", 2023), faithful to the checkpoints.

Tokens are [label, time, patches]; in_blocks push their outputs on a stack that the out_blocks pop as long skips,
merged by `skip_linear`. Parameter names equal those of `imagenet256_uvit_huge.pth` (docs/upstream.md §3.2).
Each block's sub-layers are the children `attn` and `mlp`, so a cache can attach without this file knowing.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Attention, Mlp, PatchEmbed, timestep_embedding


class UViTBlock(nn.Module):
    """Pre-norm transformer block with an optional long-skip input: x = skip_linear([x, skip]) first."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, skip: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class UViT(nn.Module):
    """Class-conditional U-ViT. `depth` counts in+out blocks; there are depth // 2 of each plus one mid block.

    forward(x (N,C,H,W), t (N,) model time (t_continuous * 1000), y (N,) labels; null label = num_classes - 1).
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 2,
        in_chans: int = 4,
        embed_dim: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        num_classes: int = 1001,
    ):
        super().__init__()
        self.input_size = img_size
        self.in_channels = in_chans
        self.out_channels = in_chans
        self.patch_size = patch_size
        self.num_classes = num_classes  # includes the null label, as upstream (1001 for ImageNet)
        self.null_class = num_classes - 1
        self.extras = 2  # label token + time token
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.label_emb = nn.Embedding(num_classes, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + self.patch_embed.num_patches, embed_dim))
        self.in_blocks = nn.ModuleList(
            [UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth // 2)]
        )
        self.mid_block = UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias)
        self.out_blocks = nn.ModuleList(
            [UViTBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, skip=True) for _ in range(depth // 2)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_size**2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def blocks(self) -> list[UViTBlock]:
        """Blocks in execution order (in, mid, out): index i here is router block i (docs/upstream.md §1.3)."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # (N, T, D)
        wide = torch.float64 if x.dtype == torch.float64 else torch.float32
        time_token = timestep_embedding(t, x.shape[-1], dtype=wide).to(x.dtype).unsqueeze(1)
        label_token = self.label_emb(y).unsqueeze(1)
        x = torch.cat([label_token, time_token, x], dim=1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            x = block(x)
            skips.append(x)
        x = self.mid_block(x)
        for block in self.out_blocks:
            x = block(x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, self.extras :]
        return self.unpatchify(x)
