#!/usr/bin/env python3
# A PyTorch twin of the demo model (LLaMA-style: RMSNorm, RoPE, SwiGLU, tied embeddings) on the
# retrieval task's format (BOS, records "LINE K COLON V NEWLINE", questions "QUESTION K V"; own RNG,
# same distribution), for quick learnability experiments: which model size, learning rate and
# data format let the lookup (not just copying some in-context value) form, and after how many
# steps. Not part of the build or the tests; needs torch. Options:
#   --clamp N   force head 0 of layer 0 to attend exactly N positions back (diagnosis)
#   --chk N     end each record with a checksum token (key mod N; -1: the key itself) whose
#               prediction rewards a previous-token head; the answers are scored separately
#   --ffn 0     attention-only blocks
# Example: OMP_NUM_THREADS=1 python3 scripts/retrieval-twin.py --S 32 --B 128 --steps 1500
import argparse, math, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
p = argparse.ArgumentParser()
for k, v in dict(S=32, B=128, questions=128, keys=512, values=128, steps=600, warmup=50, layers=2,
                 heads=4, hidden=128, colon=1, chk=0, seed=0, every=25, clamp=0, ffn=1).items():
    p.add_argument('--' + k, type=int, default=v)
p.add_argument('--lr', type=float, default=3e-3); p.add_argument('--init', type=float, default=0.02)
p.add_argument('--theta', type=float, default=10000.0)
a = p.parse_args(); torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)
PAD, BOS, LINE, COLON, NL, QUES = 10, 11, 12, 13, 14, 15
KB = 17; V = KB + a.keys + a.values + max(a.chk, 0); R = 5 if a.colon else 4; Qn = 3
def batch(S, B):
    m = max(1, min(a.questions, (S - 1) // (R + Qn))); n = (S - 1 - m * Qn) // R
    toks = np.full((B, S), PAD, np.int64); mask = np.zeros((B, S), bool); cmask = np.zeros((B, S), bool)
    for b in range(B):
        keys = rng.permutation(a.keys)[:n]; vals = rng.integers(0, a.values, n); pad = S - 1 - m * Qn - n * R
        rec = np.stack([np.full(n, LINE), KB + keys] + ([np.full(n, COLON)] if a.colon else []) +
                       [KB + a.keys + vals, (KB + keys if a.chk < 0 else KB + a.keys + a.values + keys % a.chk) if a.chk else np.full(n, NL)], 1).reshape(-1)
        ask = rng.permutation(n)[:m]
        q = np.stack([np.full(m, QUES), KB + keys[ask], KB + a.keys + vals[ask]], 1).reshape(-1)
        toks[b] = np.concatenate([[BOS], np.full(pad, PAD), rec, q]); qb = 1 + pad + n * R
        mask[b, qb + 1 + 3 * np.arange(m)] = True
        if a.chk: cmask[b, 1 + pad + (R - 2) + R * np.arange(n)] = True
    return torch.from_numpy(toks), torch.from_numpy(mask), torch.from_numpy(cmask)
D = a.hidden; H = a.heads; hd = D // H
def rope(x, pos):  # x [B,H,S,hd], rotate-half
    inv = a.theta ** (-torch.arange(0, hd, 2).float() / hd); ang = pos[:, None].float() * inv[None]
    c, s = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * c + torch.cat([-x2, x1], -1) * s
class Norm(nn.Module):
    def __init__(s): super().__init__(); s.w = nn.Parameter(torch.ones(D))
    def forward(s, x): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * s.w
class Layer(nn.Module):
    def __init__(s, i):
        super().__init__(); s.i = i; s.n1 = Norm(); s.n2 = Norm()
        s.qkv = nn.Linear(D, 3 * D, bias=False); s.o = nn.Linear(D, D, bias=False)
        s.g = nn.Linear(D, 3 * D, bias=False); s.u = nn.Linear(D, 3 * D, bias=False); s.d = nn.Linear(3 * D, D, bias=False)
    def forward(s, x):
        B, S, _ = x.shape; h = s.n1(x)
        q, k, v = s.qkv(h).view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)
        pos = torch.arange(S); q, k = rope(q, pos), rope(k, pos)
        sc = q @ k.transpose(-1, -2) / math.sqrt(hd)
        sc = sc.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float('-inf'))
        att = sc.softmax(-1)
        if a.clamp and s.i == 0:  # head 0 of layer 0 attends exactly `clamp` positions back
            fixed = torch.zeros(S, S); idx = torch.arange(S); j = (idx - a.clamp).clamp(min=0)
            fixed[idx, j] = 1.0; att = torch.cat([fixed.expand(B, 1, S, S), att[:, 1:]], 1)
        y = (att @ v).transpose(1, 2).reshape(B, S, D); x = x + s.o(y)
        if a.ffn: h = s.n2(x); x = x + s.d(F.silu(s.g(h)) * s.u(h))
        return x
class Model(nn.Module):
    def __init__(s):
        super().__init__(); s.emb = nn.Embedding(V, D); s.layers = nn.ModuleList([Layer(i) for i in range(a.layers)]); s.nf = Norm()
        for p_ in s.parameters():
            if p_.dim() > 1: nn.init.normal_(p_, 0, a.init)
    def forward(s, x):
        h = s.emb(x)
        for l in s.layers: h = l(h)
        return s.nf(h) @ s.emb.weight.t()
model = Model(); opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0)
def lr_at(s):
    if s < a.warmup: return a.lr * (s + 1) / a.warmup
    t = (s - a.warmup) / max(1, a.steps - a.warmup); return 0.1 * a.lr + 0.9 * a.lr * 0.5 * (1 + math.cos(math.pi * t))
t0 = time.time(); accs = []
for st in range(a.steps):
    x, msk, cm = batch(a.S, a.B); cm = cm[:, :-1]; logits = model(x)[:, :-1]; tgt = x[:, 1:]; m = msk[:, :-1]
    lm = m | cm; loss = F.cross_entropy(logits[lm], tgt[lm])
    for g in opt.param_groups: g['lr'] = lr_at(st)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    accs.append((logits[m].argmax(-1) == tgt[m]).float().mean().item())
    if (st + 1) % a.every == 0:
        print(f"step {st+1} loss {loss.item():.3f} acc {np.mean(accs[-a.every:]):.3f} t {time.time()-t0:.0f}s", flush=True)
