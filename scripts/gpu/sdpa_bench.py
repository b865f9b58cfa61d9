#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention timed like `ringattn bench attention`.

For the side-by-side GPU comparison of docs/benchmarks.md: the same shapes (B, S, H, D, causal),
the same FLOP convention (forward 4*B*H*S^2*D, backward 2.5x the forward, both halved when
causal) and the same timing (median of --repeat forward and forward+backward passes after
--warmup untimed ones, each ended by a device synchronize). One JSON object per sequence length
goes to --json (a list) and a line each to stdout.

  python3 scripts/gpu/sdpa_bench.py --seqs 8192,16384 --heads 16 --head-dim 128 --causal \\
      --dtype float32 --json sdpa.json
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(S, args, device, dtype):
    B, H, D = args.batch, args.heads, args.head_dim
    g = torch.Generator(device="cpu").manual_seed(1234 + S)
    # SDPA's layout is [B, H, S, D]; values as ringattn's benchmark draws them (standard normal).
    q, k, v, do = (torch.randn(B, H, S, D, generator=g, dtype=torch.float32).to(device, dtype)
                   for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    fwd_s, all_s = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for it in range(args.warmup + args.repeat):
        for t in (q, k, v):
            t.grad = None
        sync(device)
        t0 = time.perf_counter()
        o = F.scaled_dot_product_attention(q, k, v, is_causal=args.causal)
        sync(device)
        t1 = time.perf_counter()
        o.backward(do)
        sync(device)
        t2 = time.perf_counter()
        if it >= args.warmup:
            fwd_s.append(t1 - t0)
            all_s.append(t2 - t0)
    causal = 0.5 if args.causal else 1.0
    flops_fwd = 4.0 * B * H * S * S * D * causal
    fwd, full = statistics.median(fwd_s), statistics.median(all_s)
    r = {
        "impl": "torch.sdpa",
        "kernel": "PyTorch's own choice (flash / memory-efficient / math)",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "B": B, "S": S, "H": H, "D": D, "causal": args.causal,
        "fwd_ms": fwd * 1e3, "fwdbwd_ms": full * 1e3,
        "tflops_fwd": flops_fwd / fwd * 1e-12,
        "tflops_fwdbwd": 3.5 * flops_fwd / full * 1e-12,
        "flop_convention": "forward 4*B*H*S^2*D, backward 2.5x forward, halved when causal",
    }
    if device.type == "cuda":
        r["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", default="8192,16384,32768,65536")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default="")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    results = []
    for S in [int(s) for s in args.seqs.split(",") if s]:
        try:
            r = bench_one(S, args, device, dtype)
        except torch.cuda.OutOfMemoryError as e:  # reported, not fatal: the next length may not run
            r = {"impl": "torch.sdpa", "S": S, "dtype": args.dtype, "error": f"out of memory: {e}"}
        results.append(r)
        if "error" in r:
            print(f"sdpa {args.dtype} S={S}: {r['error'][:120]}", flush=True)
        else:
            print(f"sdpa {r['dtype']} S={S} H={r['H']} D={r['D']} causal={r['causal']}: "
                  f"fwd {r['fwd_ms']:.2f} ms {r['tflops_fwd']:.1f} TFLOP/s, fwd+bwd "
                  f"{r['fwdbwd_ms']:.2f} ms {r['tflops_fwdbwd']:.1f} TFLOP/s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
