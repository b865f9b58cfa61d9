#!/usr/bin/env python3
"""Makes the Hugging Face conformance fixture of test/data/hf_tiny/ with the transformers library,
and checks a directory written by `ringattn export` against it.

Run once by hand (pip install torch transformers safetensors numpy); the C++ tests only read
the files it wrote and never need Python.

  scripts/make-hf-fixture.py [--out test/data/hf_tiny]
      writes, from a fixed seed:
        config.json, model.safetensors    a tiny random LlamaForCausalLM (GQA: 4 heads, 2 key/
                                          value heads; untied head; 2 layers; vocab 128;
                                          hidden 64), float32, as save_pretrained writes it
        bf16_sharded/                     the same model in bfloat16, sharded by save_pretrained
                                          (model-0000i-of-0000n.safetensors and
                                          model.safetensors.index.json)
        reference.safetensors             input_ids I64 [2, 32]; logits F32 [2, 32, 128] and
                                          loss F32 [1] of the float32 model (eager attention,
                                          labels = input_ids: the mean next-token cross-entropy
                                          over the 2 x 31 predicted tokens)
        tokens.ratokens                   4096 uint16 tokens (RATOKENS, model/data/token_file.h)
                                          of a learnable sequence, for fine-tuning tests

  scripts/make-hf-fixture.py --check DIR [--fixture test/data/hf_tiny] [--tolerance 1e-4]
      loads DIR with LlamaForCausalLM.from_pretrained (what `ringattn export` wrote), runs the
      fixture's input_ids through it and compares the logits and loss with reference.safetensors
      (max |diff| / max |reference|). Exit status 1 on a mismatch.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 128
SEED = 1234


def build_model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        # A small base makes the rotary angles turn a lot over 32 positions, so a wrong
        # convention (interleaved pairs, another frequency formula) changes the logits visibly.
        rope_theta=500.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        attn_implementation="eager",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    # The default initialisation (stddev 0.02) leaves every layer nearly linear; larger weights
    # and RMSNorm weights away from 1 make the comparison sensitive to every term.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


def write_token_file(path: str, tokens: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(b"RATOKENS")
        f.write(struct.pack("<IIQ", 1, 2, len(tokens)))
        f.write(tokens.astype("<u2").tobytes())


def make(out: str) -> int:
    os.makedirs(out, exist_ok=True)
    model = build_model()
    model.save_pretrained(out)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)  # not part of the model; keeps the fixture to what import reads

    g = torch.Generator().manual_seed(SEED + 1)
    input_ids = torch.randint(0, VOCAB, (2, 32), generator=g, dtype=torch.int64)
    with torch.no_grad():
        res = model(input_ids=input_ids, labels=input_ids)
    logits = res.logits.float().contiguous()
    loss = res.loss.float().reshape(1)
    # The loss by hand in float64, as a check of the convention the C++ side implements.
    lp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    manual = -lp.gather(-1, input_ids[:, 1:, None]).mean()
    assert abs(manual.item() - loss.item()) < 1e-5 * abs(manual.item()), (manual, loss)
    save_file({"input_ids": input_ids, "logits": logits, "loss": loss},
              os.path.join(out, "reference.safetensors"))

    sharded = os.path.join(out, "bf16_sharded")
    model.to(torch.bfloat16).save_pretrained(sharded, max_shard_size="60KB")
    gen = os.path.join(sharded, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)

    # A sequence a model can learn: a fixed random cycle of 61 tokens, with every 8th token
    # replaced by noise, so the loss falls within a few steps but never reaches zero.
    rng = np.random.default_rng(SEED + 2)
    cycle = rng.integers(0, VOCAB, 61)
    tokens = np.resize(cycle, 4096)
    noise = rng.integers(0, VOCAB, tokens.shape)
    tokens[::8] = noise[::8]
    write_token_file(os.path.join(out, "tokens.ratokens"), tokens)

    print(f"wrote {out}: loss {loss.item():.6f}, logits {tuple(logits.shape)}, "
          f"max |logit| {logits.abs().max().item():.3f}")
    for root, _, files in os.walk(out):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"  {os.path.relpath(p, out)}: {os.path.getsize(p)} bytes")
    return 0


def check(directory: str, fixture: str, tolerance: float) -> int:
    ref = load_file(os.path.join(fixture, "reference.safetensors"))
    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                             dtype=torch.float32).eval()
    cfg = json.load(open(os.path.join(directory, "config.json")))
    print(f"loaded {directory} as {type(model).__name__} ({sum(p.numel() for p in model.parameters())} "
          f"parameters; config dtype {cfg.get('dtype', cfg.get('torch_dtype'))})")
    with torch.no_grad():
        res = model(input_ids=ref["input_ids"], labels=ref["input_ids"])
    ok = True
    for name, got in (("logits", res.logits.float()), ("loss", res.loss.float().reshape(1))):
        want = ref[name]
        rel = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        good = rel <= tolerance
        ok = ok and good
        print(f"{name}: max |diff| / max |reference| = {rel:.3e} ({'ok' if good else 'MISMATCH'})")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="test/data/hf_tiny", help="where to write the fixture")
    ap.add_argument("--check", metavar="DIR", help="check an exported directory instead")
    ap.add_argument("--fixture", default="test/data/hf_tiny", help="the fixture --check compares with")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.check:
        return check(args.check, args.fixture, args.tolerance)
    return make(args.out)


if __name__ == "__main__":
    sys.exit(main())
