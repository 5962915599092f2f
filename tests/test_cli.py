"""The command line: help texts, exit codes, error messages, the sampling command, the demo."""

import os

import numpy as np
import pytest

from l2c.cli import build_parser, main


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_every_subcommand_documents_every_option_with_default():
    parser = build_parser()
    subs = dict(_subparsers(parser))
    assert {"sample", "router", "import", "show", "train-router", "train-model", "evaluate", "demo"} <= set(subs)
    for name, sub in subs.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
        text = sub.format_help()
        if any(a.option_strings and a.default not in (None, False) for a in sub._actions if a.dest != "help"):
            assert "(default:" in text, name


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "l2c demo" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["sample", "--no-such-flag"], ["sample", "--dtype", "fp8"], []])
def test_a_bad_flag_gets_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("l2c") and "error: " in lines[0], lines  # no usage block


def test_unknown_model_and_missing_weights(capsys):
    assert main(["sample", "--model", "DiT-XXL/2"]) == 2
    assert "presets" in capsys.readouterr().err
    assert main(["sample", "--model", "DiT-XL/2"]) == 2
    assert "--ckpt" in capsys.readouterr().err
    assert main(["sample", "--model", "DiT-tiny", "--ckpt", "/no/such/file.pt"]) == 2
    assert "/no/such/file.pt" in capsys.readouterr().err


def test_sample_random_init_writes_grid_and_npz(tmp_path):
    out, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                "--model",
                "DiT-tiny",
                "--random-init",
                "--steps",
                "4",
                "--seeds",
                "0-5",
                "--classes",
                "1,2",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--npz",
                str(npz),
            ]
        )
        == 0
    )
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 8, 8, 1) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [1, 2, 1, 2, 1, 2]
    assert out.stat().st_size > 100


def test_latent_model_needs_vae(capsys):
    assert main(["sample", "--model", "DiT-S/8", "--random-init", "--steps", "2", "--seeds", "0"]) == 2
    assert "--vae" in capsys.readouterr().err


def _save_tiny_vae(folder):
    """A 2x-downsampling AutoencoderKL with random weights, saved as a local diffusers folder."""
    from diffusers import AutoencoderKL

    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    ).save_pretrained(folder)


def test_vae_round_trip_with_tiny_autoencoder(tmp_path):
    import torch

    from l2c.utils.vae import load_vae

    _save_tiny_vae(tmp_path / "vae")
    codec = load_vae(tmp_path / "vae")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert z.shape == (2, 4, 8, 8)  # two blocks: one 2x downsampling
    assert codec.decode(z).shape == (2, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vae(tmp_path / "nothing")


@pytest.mark.skipif(
    not os.path.exists(os.path.expanduser(os.environ.get("L2C_DATA", "~/.cache/l2c")) + "/mnist.npz"),
    reason="MNIST cache not fetched (`l2c fetch-mnist`)",
)
def test_demo_smoke(tmp_path, capsys):
    assert main(["demo", "--images", "20", "--iterations", "4", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "L2C cached" in out and "uncached" in out
    for f in ("uncached.png", "cached.png", "router.png", "router.safetensors", "results.json"):
        assert (tmp_path / f).exists(), f


def test_prepare_data_with_a_vae(tmp_path):
    import numpy as np
    from PIL import Image

    from l2c.data.prepared import PreparedDataset

    _save_tiny_vae(tmp_path / "vae")
    rng = np.random.default_rng(0)
    for i in range(5):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png"
        )
    args = ["prepare-data", str(tmp_path / "imgs"), "--size", "16", "--vae", str(tmp_path / "vae")]
    assert main([*args, "--out", str(tmp_path / "lat")]) == 0
    data = PreparedDataset(tmp_path / "lat")
    assert data.kind == "latents" and len(data) == 5 and data.shape == (4, 8, 8) and data.classes == ["c0", "c1"]
    assert not np.array_equal(data.data[:, 0], data.data[:, 1])  # the mirror image's latent is stored beside it
