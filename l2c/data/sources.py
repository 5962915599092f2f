"""Training data by name: MNIST, a folder made by `l2c prepare-data`, or a raw image folder (prepared first)."""

from __future__ import annotations

from pathlib import Path

from ..utils import distributed
from .prepared import ArrayDataset, PreparedDataset, is_prepared, prepare_image_folder


def open_training_data(data: str, model, latent: bool, vae: str | None, cache: Path):
    """MNIST, a prepared folder, or an image folder (prepared into `cache` first, resumably, by one process).

    `latent`: the model samples VAE latents (the preset's `latent` flag), so a raw folder is encoded with `vae`.
    """
    if data == "mnist":
        from .mnist import load_mnist, to_model_range

        if model.in_channels != 1 or model.input_size != 28:
            raise ValueError(
                f"MNIST is 1x28x28 but the model takes {model.in_channels}x{model.input_size}x"
                f"{model.input_size}: use an MNIST preset (DiT-mnist, U-ViT-mnist) or --data FOLDER"
            )
        x, y = load_mnist("trainval")
        return ArrayDataset(to_model_range(x), y)
    if is_prepared(data):
        dataset = PreparedDataset(data)
    else:
        if latent and not vae:
            raise ValueError("a latent model trains on VAE latents: pass --vae FOLDER (a local AutoencoderKL)")
        if distributed.is_main():  # one process prepares; under torchrun the others wait, then read it
            if latent:
                from ..utils.vae import load_vae

                prepare_image_folder(data, cache, model.input_size * 8, 3, encode=load_vae(vae).encode)
            else:
                prepare_image_folder(data, cache, model.input_size, model.in_channels)
        distributed.barrier()
        dataset = PreparedDataset(cache)
    expected = (model.in_channels, model.input_size, model.input_size)
    if tuple(dataset.shape) != expected:
        raise ValueError(
            f"{data} holds {tuple(dataset.shape)} per image but the model takes {expected}: "
            f"prepare the folder at the model's resolution (`l2c prepare-data --size`, x8 for latent models)"
        )
    return dataset
