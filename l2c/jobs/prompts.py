"""Prompts to FluxPipeline's embedding arguments, with a pipeline folder's own text encoders.

    prompts = read_prompts("prompts.txt")                      # one prompt per line
    tensors = encode_prompts("my-flux-pipeline/", prompts, negative="", cfg=3.5)

The result is named as FluxPipeline's call arguments (`prompt_embeds`, `pooled_prompt_embeds`, and for true CFG
`negative_prompt_embeds` / `negative_pooled_prompt_embeds`), exactly what `--conditioning FILE.safetensors` holds, so
everything downstream reads one form. The encoding is FluxPipeline.encode_prompt itself (CLIP's pooled vector, T5's
sequence), so a run from prompts equals the pipeline called with the same strings (tests/test_prompts.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# The components FluxPipeline.encode_prompt reads; a folder lacking any of them is driven by --conditioning instead.
TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def read_prompts(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; an empty file is an error (nothing to condition on)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"--prompts {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt (one prompt per line)")
    return prompts


def text_components_missing(folder: str | Path) -> list[str]:
    """The text components FluxPipeline needs that the folder's model_index.json does not list (all if no index)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return list(TEXT_COMPONENTS)
    listed = json.loads(index.read_text())
    return [c for c in TEXT_COMPONENTS if not (isinstance(listed.get(c), list) and listed[c][0])]


def encode_prompts(
    folder: str | Path,
    prompts: list[str],
    negative: str | None = "",
    cfg: float = 1.0,
    max_sequence_length: int = 512,
    dtype=torch.float32,
) -> dict[str, torch.Tensor]:
    """FluxPipeline's prompt arguments for `prompts` (and, for cfg > 1, the `negative` prompt), on the CPU, in
    `dtype` (the encoders run in the dtype the folder stores)."""
    from diffusers import FluxPipeline

    missing = text_components_missing(folder)
    if missing:
        raise ValueError(
            f"{folder} has no {', '.join(missing)} (a pipeline folder's text encoders encode --prompts): pass "
            "--conditioning FILE.safetensors with precomputed prompt_embeds and pooled_prompt_embeds instead"
        )
    if cfg > 1 and negative is None:
        raise ValueError("true CFG (--cfg > 1) needs a negative prompt (the empty string is the usual one)")
    # The text side only: the transformer and VAE are not loaded (the workload loads the transformer itself).
    pipe = FluxPipeline.from_pretrained(str(folder), transformer=None, vae=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device="cpu", max_sequence_length=max_sequence_length
        )
        out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if cfg > 1:
            neg, neg_pooled, _ = pipe.encode_prompt(
                prompt=[negative], prompt_2=None, device="cpu", max_sequence_length=max_sequence_length
            )
            out.update(negative_prompt_embeds=neg, negative_pooled_prompt_embeds=neg_pooled)
    return {k: v.to(dtype).contiguous() for k, v in out.items()}
