"""Models: upstream key layout, equations (float64 reference written here), save/load, bad checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F

from l2c.models import MODELS, create_model
from l2c.models.checkpoints import check_state_dict, load_model, read_state_dict


def dit_official_shapes(depth, D, patch, in_ch=4, input_size=32, num_classes=1000, learn_sigma=True):
    """Key -> shape of an official DiT checkpoint, written from the spec's key list (§3.1), not from our model."""
    out_ch = in_ch * (2 if learn_sigma else 1)
    T = (input_size // patch) ** 2
    shapes = {
        "x_embedder.proj.weight": (D, in_ch, patch, patch),
        "x_embedder.proj.bias": (D,),
        "t_embedder.mlp.0.weight": (D, 256),
        "t_embedder.mlp.0.bias": (D,),
        "t_embedder.mlp.2.weight": (D, D),
        "t_embedder.mlp.2.bias": (D,),
        "y_embedder.embedding_table.weight": (num_classes + 1, D),
        "pos_embed": (1, T, D),
        "final_layer.linear.weight": (patch * patch * out_ch, D),
        "final_layer.linear.bias": (patch * patch * out_ch,),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.adaLN_modulation.1.bias": (2 * D,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "attn.qkv.weight": (3 * D, D),
                b + "attn.qkv.bias": (3 * D,),
                b + "attn.proj.weight": (D, D),
                b + "attn.proj.bias": (D,),
                b + "mlp.fc1.weight": (4 * D, D),
                b + "mlp.fc1.bias": (4 * D,),
                b + "mlp.fc2.weight": (D, 4 * D),
                b + "mlp.fc2.bias": (D,),
                b + "adaLN_modulation.1.weight": (6 * D, D),
                b + "adaLN_modulation.1.bias": (6 * D,),
            }
        )
    return shapes


def uvit_official_shapes(depth, D, patch=2, in_ch=4, img=32, num_classes=1001):
    T = (img // patch) ** 2 + 2
    shapes = {
        "patch_embed.proj.weight": (D, in_ch, patch, patch),
        "patch_embed.proj.bias": (D,),
        "pos_embed": (1, T, D),
        "label_emb.weight": (num_classes, D),
        "norm.weight": (D,),
        "norm.bias": (D,),
        "decoder_pred.weight": (patch * patch * in_ch, D),
        "decoder_pred.bias": (patch * patch * in_ch,),
    }
    names = (
        [f"in_blocks.{i}" for i in range(depth // 2)] + ["mid_block"] + [f"out_blocks.{i}" for i in range(depth // 2)]
    )
    for n in names:
        b = n + "."
        shapes.update(
            {
                b + "norm1.weight": (D,),
                b + "norm1.bias": (D,),
                b + "attn.qkv.weight": (3 * D, D),
                b + "attn.proj.weight": (D, D),
                b + "attn.proj.bias": (D,),
                b + "norm2.weight": (D,),
                b + "norm2.bias": (D,),
                b + "mlp.fc1.weight": (4 * D, D),
                b + "mlp.fc1.bias": (4 * D,),
                b + "mlp.fc2.weight": (D, 4 * D),
                b + "mlp.fc2.bias": (D,),
            }
        )
        if n.startswith("out_blocks"):
            shapes.update({b + "skip_linear.weight": (D, 2 * D), b + "skip_linear.bias": (D,)})
    return shapes


SIZES_DIT = {"S": (12, 384), "B": (12, 768), "L": (24, 1024), "XL": (28, 1152)}
SIZES_UVIT = {"S": (12, 512), "M": (16, 768), "L": (20, 1024), "H": (28, 1152)}


@pytest.mark.parametrize("size", list(SIZES_DIT))
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_official_dit_layout_loads_strict(size, patch):
    depth, D = SIZES_DIT[size]
    shapes = dit_official_shapes(depth, D, patch)
    with torch.device("meta"):
        model = create_model(f"DiT-{size}/{patch}")
        sd = {k: torch.empty(s) for k, s in shapes.items()}
    check_state_dict(model, sd, f"DiT-{size}/{patch}")
    model.load_state_dict(sd, strict=True, assign=True)


def test_official_dit_xl2_512_layout():
    shapes = dit_official_shapes(28, 1152, 2, input_size=64)
    with torch.device("meta"):
        model = create_model("DiT-XL/2", input_size=64)
        model.load_state_dict({k: torch.empty(s) for k, s in shapes.items()}, strict=True, assign=True)


@pytest.mark.parametrize("size", list(SIZES_UVIT))
def test_official_uvit_layout_loads_strict(size):
    depth, D = SIZES_UVIT[size]
    with torch.device("meta"):
        model = create_model(f"U-ViT-{size}/2")
        sd = {k: torch.empty(s) for k, s in uvit_official_shapes(depth, D).items()}
    check_state_dict(model, sd, f"U-ViT-{size}/2")
    model.load_state_dict(sd, strict=True, assign=True)


# ------------------------------------------------------------------ float64 references written from the equations
def _linear(x, sd, name):
    return x @ sd[name + ".weight"].T + (sd[name + ".bias"] if name + ".bias" in sd else 0)


def _ln(x, eps, w=None, b=None):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y * w + b if w is not None else y


def _attention(x, sd, prefix, heads):
    N, T, D = x.shape
    q, k, v = _linear(x, sd, prefix + ".qkv").reshape(N, T, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
    return _linear((a @ v).transpose(1, 2).reshape(N, T, D), sd, prefix + ".proj")


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _sinusoid(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = t.double()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


def _patchify(x, sd, name, p):
    N, C, H, W = x.shape
    patches = x.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(N, (H // p) * (W // p), C * p * p)
    w = sd[name + ".weight"].reshape(sd[name + ".weight"].shape[0], -1)
    return patches @ w.T + sd[name + ".bias"]


def _unpatchify(x, p, c):
    N, T, _ = x.shape
    h = int(T**0.5)
    return x.reshape(N, h, h, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(N, c, h * p, h * p)


def reference_dit(sd, x, t, y, depth, heads, p, out_ch):
    h = _patchify(x, sd, "x_embedder.proj", p) + sd["pos_embed"]
    temb = _linear(F.silu(_linear(_sinusoid(t, 256), sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    for i in range(depth):
        b = f"blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = _linear(F.silu(c), sd, b + "adaLN_modulation.1").chunk(6, -1)
        h = h + g1[:, None] * _attention(_ln(h, 1e-6) * (1 + sc1[:, None]) + sh1[:, None], sd, b + "attn", heads)
        m = _ln(h, 1e-6) * (1 + sc2[:, None]) + sh2[:, None]
        h = h + g2[:, None] * _linear(_gelu_tanh(_linear(m, sd, b + "mlp.fc1")), sd, b + "mlp.fc2")
    sh, sc = _linear(F.silu(c), sd, "final_layer.adaLN_modulation.1").chunk(2, -1)
    return _unpatchify(_linear(_ln(h, 1e-6) * (1 + sc[:, None]) + sh[:, None], sd, "final_layer.linear"), p, out_ch)


def reference_uvit(sd, x, t, y, depth, heads, p, C):
    h = _patchify(x, sd, "patch_embed.proj", p)
    D = h.shape[-1]
    h = torch.cat([sd["label_emb.weight"][y][:, None], _sinusoid(t, D)[:, None], h], 1) + sd["pos_embed"]

    def block(h, name, skip=None):
        if skip is not None:
            h = _linear(torch.cat([h, skip], -1), sd, name + ".skip_linear")
        h = h + _attention(
            _ln(h, 1e-5, sd[name + ".norm1.weight"], sd[name + ".norm1.bias"]), sd, name + ".attn", heads
        )
        m = _ln(h, 1e-5, sd[name + ".norm2.weight"], sd[name + ".norm2.bias"])
        return h + _linear(_gelu(_linear(m, sd, name + ".mlp.fc1")), sd, name + ".mlp.fc2")

    skips = []
    for i in range(depth // 2):
        h = block(h, f"in_blocks.{i}")
        skips.append(h)
    h = block(h, "mid_block")
    for i in range(depth // 2):
        h = block(h, f"out_blocks.{i}", skips.pop())
    h = _linear(_ln(h, 1e-5, sd["norm.weight"], sd["norm.bias"]), sd, "decoder_pred")[:, 2:]
    return _unpatchify(h, p, C)


def _randomise(model):
    # Non-zero everywhere (adaLN-Zero would otherwise hide most of the computation).
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn_like(prm) * 0.3)
    return model


def test_dit_matches_float64_reference():
    model = _randomise(create_model("DiT-tiny")).double().eval()
    x, t, y = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 500, 999]), torch.tensor([1, 7, 10])
    sd = {k: v.double() for k, v in model.state_dict().items()}
    expected = reference_dit(sd, x, t, y, depth=2, heads=2, p=4, out_ch=2)
    torch.testing.assert_close(model(x, t, y), expected, rtol=1e-10, atol=1e-10)


def test_uvit_matches_float64_reference():
    model = _randomise(create_model("U-ViT-tiny")).double().eval()
    x, t, y = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.tensor([1.0, 500.5, 1000.0]), torch.tensor([0, 9, 10])
    sd = {k: v.double() for k, v in model.state_dict().items()}
    expected = reference_uvit(sd, x, t, y, depth=2, heads=2, p=4, C=1)
    torch.testing.assert_close(model(x, t, y), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("preset", ["DiT-tiny", "U-ViT-tiny"])
@pytest.mark.parametrize("wrap", [None, "ema", "model"])
def test_save_reload_identical(tmp_path, preset, wrap):
    model = _randomise(create_model(preset)).eval()
    sd = model.state_dict()
    torch.save(sd if wrap is None else {wrap: sd}, tmp_path / "m.pt")
    loaded, _ = load_model(str(tmp_path / "m.pt"), preset=preset)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_pixel_and_latent_inputs():
    for preset, kw in [("DiT-tiny", {}), ("DiT-tiny", {"in_channels": 4}), ("U-ViT-tiny", {"in_chans": 4})]:
        m = create_model(preset, **kw)
        c = kw.get("in_channels", kw.get("in_chans", 1))
        out = m(torch.randn(2, c, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
        assert out.shape[1] == m.out_channels and out.shape[2:] == (8, 8)


def test_mismatched_checkpoint_names_keys_and_fitting_preset(tmp_path):
    sd = create_model("DiT-tiny").state_dict()
    torch.save(sd, tmp_path / "tiny.pt")
    with pytest.raises(ValueError) as e:
        load_model(str(tmp_path / "tiny.pt"), preset="U-ViT-tiny")
    msg = str(e.value)
    assert "missing keys" in msg and "patch_embed.proj.weight" in msg and "DiT-tiny" in msg


def test_shape_mismatch_is_reported(tmp_path):
    sd = create_model("DiT-tiny").state_dict()
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight: file \(7, 32\)"):
        load_model(str(tmp_path / "bad.pt"), preset="DiT-tiny")


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="DiT-XL/2"):
        create_model("DiT-XXL/2")


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    torch.save(create_model("DiT-tiny").state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_state_dict(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_state_dict(tmp_path / "empty.pt")


def test_presets_table_is_complete():
    for s in SIZES_DIT:
        for p in (2, 4, 8):
            assert f"DiT-{s}/{p}" in MODELS
    for s in SIZES_UVIT:
        assert f"U-ViT-{s}/2" in MODELS
