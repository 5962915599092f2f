"""A small MNIST CNN, trained by the project, that plays Inception's role for the MNIST metrics.

Features = the 128-d penultimate activations (FID, precision / recall); logits = 10 classes (IS, accuracy).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.io import atomic_output
from ..utils.progress import progress_bar

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "mnist-classifier.safetensors"


class MNISTClassifier(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, 32), block(32, 64), block(64, 128), nn.Flatten())  # 28->14->7->3
        self.fc = nn.Linear(128 * 3 * 3, 128)
        self.head = nn.Linear(128, 10)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, 28, 28) in [-1, 1] -> (N, 128) features."""
        return F.relu(self.fc(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def load_classifier(path: str | Path | None = None) -> MNISTClassifier:
    from safetensors.torch import load_file

    path = Path(path or DEFAULT_WEIGHTS)
    if not path.exists():
        raise FileNotFoundError(f"MNIST classifier weights not found at {path}; run `l2c train-classifier`")
    model = MNISTClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classify(model: MNISTClassifier, images_uint8: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 28, 28[, 1]) -> (features float64 (N, 128), logits float64 (N, 10))."""
    x = torch.from_numpy(np.asarray(images_uint8).reshape(-1, 1, 28, 28)).float() / 127.5 - 1.0
    feats, logits = [], []
    for i in range(0, len(x), batch):
        f = model.embed(x[i : i + batch])
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(feats).double().numpy(), torch.cat(logits).double().numpy()


def train_classifier(out: Path, epochs: int = 2, seed: int = 0) -> float:
    """Train on MNIST train+val (60k), report test accuracy (10k), save safetensors. Returns test accuracy."""
    from safetensors.torch import save_file

    from ..data.mnist import load_mnist, to_model_range

    torch.manual_seed(seed)
    x, y = load_mnist("trainval")
    x, y = torch.from_numpy(to_model_range(x)), torch.from_numpy(y)
    model = MNISTClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    bar = progress_bar(range(steps), desc="train-classifier")
    for step in bar:
        if step % (len(x) // 128) == 0:
            perm = torch.randperm(len(x), generator=gen)
        idx = perm[(step % (len(x) // 128)) * 128 : (step % (len(x) // 128) + 1) * 128]
        xb = x[idx]
        shift = torch.randint(-2, 3, (2,), generator=gen).tolist()  # small translations help generalisation
        xb = torch.roll(xb, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    xt, yt = load_mnist("test")
    _, logits = classify(model, xt)
    acc = float((logits.argmax(1) == yt).mean())
    with atomic_output(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return acc
