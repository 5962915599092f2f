"""Prompts encoded by a pipeline folder's own text encoders: a workload run from the encoded prompts equals
FluxPipeline called with the same strings (a tiny FLUX pipeline with tiny CLIP and T5 encoders and tokenizers made
in the test, saved as a folder and loaded back), and bad prompt input is refused in one line."""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from l2c.jobs.prompts import encode_prompts, read_prompts, text_components_missing  # noqa: E402
from l2c.jobs.workload import FluxWorkload  # noqa: E402
from l2c.sampling.flow_matching import DiffusersFlowMatchEuler  # noqa: E402

WORDS = ["a", "photo", "of", "digit", "zero", "one", "two", "cat"]
STEPS, HEIGHT = 4, 64  # 64 px -> an 8 x 8 latent of 4 channels -> 16 packed tokens


def _tokenizers(folder):
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS + list("abcdefghijklmnopqrstuvwxyz"):
        vocab.setdefault(w + "</w>", len(vocab))
        vocab.setdefault(w, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    clip = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    # T5's SentencePiece form (a unigram vocabulary over "▁"-prefixed words), as transformers builds it from a list.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in WORDS]
    t5 = transformers.T5TokenizerFast(vocab=vocab, extra_ids=0)
    return clip, t5


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    from test_workload import _packed_flux

    folder = tmp_path_factory.mktemp("flux-pipeline")
    clip_tok, t5_tok = _tokenizers(folder)
    torch.manual_seed(1)
    clip = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=clip_tok.vocab_size,
            hidden_size=32,  # the transformer's pooled_projection_dim
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(
            vocab_size=len(WORDS) + 4, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=0
        )
    ).eval()  # d_model: the transformer's joint_attention_dim
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=None,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=_packed_flux(),
    )
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe", pipe


def test_a_run_from_encoded_prompts_equals_flux_pipeline_called_with_the_strings(pipeline_folder, tmp_path):
    folder, pipe = pipeline_folder
    (tmp_path / "prompts.txt").write_text("a photo of digit one\n\n  a cat  \n")
    prompts = read_prompts(tmp_path / "prompts.txt")
    assert prompts == ["a photo of digit one", "a cat"]
    tensors = encode_prompts(folder, prompts, negative="", cfg=2.0, max_sequence_length=8)
    assert tensors["prompt_embeds"].shape == (2, 8, 32) and tensors["negative_pooled_prompt_embeds"].shape == (1, 32)

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    workload = FluxWorkload(pipe.transformer, DiffusersFlowMatchEuler(scheduler, STEPS, 16), tensors, 2.0, (4, 8, 8))
    seeds = [4, 7]
    with torch.no_grad():
        denoise, _ = workload.denoiser(torch.tensor([0, 1]))
        ours = workload.sampler.sample(denoise, workload.noise(seeds))
    theirs = pipe(
        prompt=prompts,
        negative_prompt=[""] * len(prompts),
        true_cfg_scale=2.0,
        height=HEIGHT,
        width=HEIGHT,
        num_inference_steps=STEPS,
        max_sequence_length=8,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="latent",
    ).images
    assert torch.equal(ours, theirs)
    # The prompts really condition: another prompt gives other embeddings.
    other = encode_prompts(folder, ["two"], cfg=1.0, max_sequence_length=8)
    assert set(other) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert not torch.equal(other["prompt_embeds"][0], tensors["prompt_embeds"][0])


def test_bad_prompt_input_is_refused_in_one_line(pipeline_folder, tmp_path):
    folder, _ = pipeline_folder
    (tmp_path / "empty.txt").write_text("\n   \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="no such file"):
        read_prompts(tmp_path / "absent.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_prompts(tmp_path / "binary.txt")
    assert text_components_missing(folder) == []
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "text_encoder": [None, None]}))
    assert text_components_missing(bare) == ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    with pytest.raises(ValueError, match="--conditioning"):
        encode_prompts(bare, ["a cat"])
    with pytest.raises(ValueError, match="negative prompt"):
        encode_prompts(folder, ["a cat"], negative=None, cfg=2.0)


def test_train_router_takes_prompts_as_it_takes_their_embeddings(pipeline_folder, tmp_path):
    from safetensors.torch import save_file

    from l2c.cli import main
    from l2c.router.files import load_router

    folder, _ = pipeline_folder
    (tmp_path / "prompts.txt").write_text("a photo of digit one\na cat\n")
    embeddings = encode_prompts(folder, ["a photo of digit one", "a cat"], negative="", cfg=2.0)
    save_file(embeddings, str(tmp_path / "prompts.safetensors"))
    common = ["train-router", "--model", str(folder), "--height", "64", "--width", "64", "--steps", "3", "--cfg", "2"]
    common += ["--target-macs", "0.6", "--search-rounds", "1", "--search-images", "2", "--check-images", "0", "-q"]
    a, b = tmp_path / "from-text.safetensors", tmp_path / "from-embeddings.safetensors"
    assert main([*common, "--prompts", str(tmp_path / "prompts.txt"), "--out", str(a)]) == 0
    assert main([*common, "--conditioning", str(tmp_path / "prompts.safetensors"), "--out", str(b)]) == 0
    (ra, ma), (rb, mb) = load_router(a), load_router(b)
    assert torch.equal(ra.logits, rb.logits) and ma["actions"] == mb["actions"]


def test_bad_prompts_on_the_command_line_exit_2_before_any_work(pipeline_folder, tmp_path, capsys):
    from l2c.cli import main

    folder, _ = pipeline_folder
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "r.safetensors"
    flux = ["train-router", "--model", str(folder), "--target-macs", "0.6", "--out", str(out)]
    cases = [
        ([*flux, "--prompts", str(tmp_path / "empty.txt")], "holds no prompt"),
        ([*flux, "--prompts", str(tmp_path / "p.txt"), "--conditioning", str(tmp_path / "p.txt")], "pass one"),
        ([*flux, "--prompts", str(tmp_path / "p.txt"), "--model", str(folder / "transformer")], "text_encoder"),
        (
            ["train-router", "--model", "flux-mnist", "--target-macs", "0.6", "--prompts", str(tmp_path / "p.txt")],
            "brings its class prompts",
        ),
        (
            ["sample", "--model", "dit-mnist", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "x.png")],
            "class-conditional",
        ),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "p.txt"]
