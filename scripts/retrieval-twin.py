#!/usr/bin/env python3
# A PyTorch twin of the demo model (LLaMA-style: RMSNorm, RoPE, SwiGLU, tied embeddings) on the
# retrieval task's format (BOS, records "LINE K COLON V NEWLINE", questions "QUESTION K V"; own RNG,
# same distribution), for quick learnability experiments: which model, optimizer and data format
# let the lookup (not just copying some in-context value) form, and after how many steps. Not part
# of the build or the tests; needs torch. Findings so far: docs/demo-learnability.md. Options:
#   --sched "S:steps[:B],..."  curriculum (overrides --S/--steps/--B); warm-up + cosine over all
#   --line 0 --colon 0 --nl 0  drop the record delimiters (records become "K V")
#   --vfirst 1                 value before key in records (with the above: "V K", what the
#                              trainer's data.retrieval.record_format = value_key writes)
#   --win0 W                   layer 0 attends only to the last W positions (itself included)
#   --clamp N                  force head 0 of layer 0 to attend exactly N positions back
#   --chk N                    end each record with a checksum token (key mod N; -1: the key)
#   --ffn 0                    attention-only blocks        --ffdim N   FFN width (384)
#   --qknorm 1 --qkscale T     RMSNorm on q, k per head; scores times T
#   --attn_lr M                lr multiplier for the attention weights     --untied 1
#   --b1 --b2 --eps --wd --lrmin --init --theta --hd --heads --hidden --layers --keys --values
#   --evalS "64,256"           evaluate at other lengths at the end
#   --probe 1                  where each layer's attention goes from the question keys
#   --save/--load PATH         model + optimizer state, to continue at another length
# Example: OMP_NUM_THREADS=1 python3 scripts/retrieval-twin.py --S 32 --B 128 --steps 600 --probe 1
import argparse, math, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
p = argparse.ArgumentParser()
for k, v in dict(S=32, B=128, questions=128, keys=512, values=128, steps=600, warmup=50, layers=2,
                 heads=4, hidden=128, colon=1, chk=0, seed=0, every=25, clamp=0, ffn=1, qknorm=0,
                 untied=0, hd=0, ffdim=384, line=1, nl=1, win0=0, vfirst=0).items():
    p.add_argument('--' + k, type=int, default=v)
for k, v in dict(lr=3e-3, init=0.02, theta=10000.0, b1=0.9, b2=0.95, eps=1e-8, wd=0.0, lrmin=0.1,
                 qkscale=1.0, attn_lr=1.0).items():
    p.add_argument('--' + k, type=float, default=v)
p.add_argument('--sched', default=''); p.add_argument('--probe', type=int, default=0); p.add_argument('--evalS', default='')
p.add_argument('--save', default=''); p.add_argument('--load', default='')
a = p.parse_args(); torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)
sched = [tuple(int(t) for t in s.split(':')) for s in a.sched.split(',')] if a.sched else [(a.S, a.steps, a.B)]
sched = [(s[0], s[1], s[2] if len(s) > 2 else a.B) for s in sched]; total = sum(s[1] for s in sched)
PAD, BOS, LINE, COLON, NL, QUES = 10, 11, 12, 13, 14, 15
KB = 17; V = KB + a.keys + a.values + max(a.chk, 0); R = 2 + a.colon + a.line + a.nl; Qn = 3
def batch(S, B, r=rng):
    m = max(1, min(a.questions, (S - 1) // (R + Qn))); n = (S - 1 - m * Qn) // R; m = min(m, n)
    pad = S - 1 - m * Qn - n * R
    keys = r.random((B, a.keys)).argsort(1)[:, :n]; vals = r.integers(0, a.values, (B, n))
    kv = [KB + a.keys + vals, KB + keys] if a.vfirst else [KB + keys] + ([np.full((B, n), COLON)] if a.colon else []) + [KB + a.keys + vals]
    cols = ([np.full((B, n), LINE)] if a.line else []) + kv + ([(KB + keys if a.chk < 0 else KB + a.keys + a.values + keys % a.chk) if a.chk else np.full((B, n), NL)] if a.nl else [])
    rec = np.stack(cols, 2).reshape(B, -1)
    ask = r.random((B, n)).argsort(1)[:, :m]
    qk = np.take_along_axis(keys, ask, 1); qv = np.take_along_axis(vals, ask, 1)
    q = np.stack([np.full((B, m), QUES), KB + qk, KB + a.keys + qv], 2).reshape(B, -1)
    toks = np.concatenate([np.full((B, 1), BOS), np.full((B, pad), PAD), rec, q], 1)
    mask = np.zeros((B, S), bool); cmask = np.zeros((B, S), bool); qb = 1 + pad + n * R
    mask[:, qb + 1 + 3 * np.arange(m)] = True
    if a.chk: cmask[:, 1 + pad + (R - 2) + R * np.arange(n)] = True
    return torch.from_numpy(toks), torch.from_numpy(mask), torch.from_numpy(cmask), n
PROBE = None
D = a.hidden; H = a.heads; hd = a.hd or D // H
def rope(x, pos):  # x [B,H,S,hd], rotate-half
    inv = a.theta ** (-torch.arange(0, hd, 2).float() / hd); ang = pos[:, None].float() * inv[None]
    c, s = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * c + torch.cat([-x2, x1], -1) * s
class Norm(nn.Module):
    def __init__(s, d=D): super().__init__(); s.w = nn.Parameter(torch.ones(d))
    def forward(s, x): return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * s.w
class Layer(nn.Module):
    def __init__(s, i):
        super().__init__(); s.i = i; s.n1 = Norm(); s.n2 = Norm()
        s.qkv = nn.Linear(D, 3 * H * hd, bias=False); s.o = nn.Linear(H * hd, D, bias=False)
        if a.qknorm: s.qn = Norm(hd); s.kn = Norm(hd)
        if a.ffn: s.g = nn.Linear(D, a.ffdim, bias=False); s.u = nn.Linear(D, a.ffdim, bias=False); s.d = nn.Linear(a.ffdim, D, bias=False)
    def forward(s, x):
        B, S, _ = x.shape; h = s.n1(x)
        q, k, v = s.qkv(h).view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)
        if a.qknorm: q, k = s.qn(q), s.kn(k)
        pos = torch.arange(S); q, k = rope(q, pos), rope(k, pos)
        sc = q @ k.transpose(-1, -2) * (a.qkscale / math.sqrt(hd))
        sc = sc.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float('-inf'))
        if a.win0 and s.i == 0: sc = sc.masked_fill(torch.ones(S, S, dtype=torch.bool).tril(-a.win0), float('-inf'))
        att = sc.softmax(-1)
        if PROBE is not None: PROBE[s.i] = att.detach()
        if a.clamp and s.i == 0:
            fixed = torch.zeros(S, S); idx = torch.arange(S); j = (idx - a.clamp).clamp(min=0)
            fixed[idx, j] = 1.0; att = torch.cat([fixed.expand(B, 1, S, S), att[:, 1:]], 1)
        y = (att @ v).transpose(1, 2).reshape(B, S, H * hd); x = x + s.o(y)
        if a.ffn: h = s.n2(x); x = x + s.d(F.silu(s.g(h)) * s.u(h))
        return x
class Model(nn.Module):
    def __init__(s):
        super().__init__(); s.emb = nn.Embedding(V, D); s.layers = nn.ModuleList([Layer(i) for i in range(a.layers)]); s.nf = Norm()
        if a.untied: s.out = nn.Parameter(torch.empty(V, D))
        for p_ in s.parameters():
            if p_.dim() > 1: nn.init.normal_(p_, 0, a.init)
    def forward(s, x):
        h = s.emb(x)
        for l in s.layers: h = l(h)
        return s.nf(h) @ (s.out if a.untied else s.emb.weight).t()
model = Model()
att_p = [p_ for n_, p_ in model.named_parameters() if '.qkv.' in n_ or '.o.' in n_]
oth_p = [p_ for n_, p_ in model.named_parameters() if not ('.qkv.' in n_ or '.o.' in n_)]
opt = torch.optim.AdamW([dict(params=att_p, m=a.attn_lr), dict(params=oth_p, m=1.0)], lr=a.lr,
                        betas=(a.b1, a.b2), eps=a.eps, weight_decay=a.wd)
if a.load:
    ck = torch.load(a.load); model.load_state_dict(ck['model']); opt.load_state_dict(ck['opt'])
def lr_at(s):
    if s < a.warmup: return a.lr * (s + 1) / a.warmup
    t = (s - a.warmup) / max(1, total - a.warmup); return a.lrmin * a.lr + (1 - a.lrmin) * a.lr * 0.5 * (1 + math.cos(math.pi * t))
def evaluate(S, nb=4):
    er = np.random.default_rng(1234); c = t_ = 0
    with torch.no_grad():
        for _ in range(nb):
            x, msk, _, n = batch(S, 64, er); lg = model(x)[:, :-1]; m = msk[:, :-1]
            c += (lg[m].argmax(-1) == x[:, 1:][m]).sum().item(); t_ += m.sum().item()
    return c / t_, n
t0 = time.time(); accs = []; st = 0
for (S, steps, B) in sched:
    for _ in range(steps):
        x, msk, cm, n = batch(S, B); cm = cm[:, :-1]; logits = model(x)[:, :-1]; tgt = x[:, 1:]; m = msk[:, :-1]
        lm = m | cm; loss = F.cross_entropy(logits[lm], tgt[lm])
        for g in opt.param_groups: g['lr'] = lr_at(st) * g['m']
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        accs.append((logits[m].argmax(-1) == tgt[m]).float().mean().item()); st += 1
        if st % a.every == 0:
            print(f"step {st} S {S} n {n} loss {loss.item():.3f} acc {np.mean(accs[-a.every:]):.3f} t {time.time()-t0:.0f}s", flush=True)
    ev, n = evaluate(S); print(f"EVAL after stage S={S}: acc {ev:.3f} (n={n}, copy chance {1/n:.3f})", flush=True)
for S in [int(s) for s in a.evalS.split(',') if s]:
    ev, n = evaluate(S); print(f"EVAL S={S}: acc {ev:.3f} (n={n}, copy chance {1/n:.3f})", flush=True)
if a.save: torch.save(dict(model=model.state_dict(), opt=opt.state_dict()), a.save)

if a.probe:
    PROBE = {}; S = sched[-1][0]; er = np.random.default_rng(99)
    x, msk, _, n = batch(S, 64, er)
    with torch.no_grad(): model(x)
    m = max(1, min(a.questions, (S - 1) // (R + Qn))); m = min(m, n); pad = S - 1 - m * Qn - n * R; qb = 1 + pad + n * R
    Kpos = 1 + pad + a.line + R * np.arange(n); Vpos = Kpos + (2 if a.colon else 1)
    xs = x.numpy(); cnt_ = 64 * m
    for li in range(a.layers):
        A = PROBE[li].numpy()  # B,H,S,S
        for h in range(H):
            cV = oV = cK = oK = 0.0; cnt = 0
            for b in range(64):
                for j in range(m):
                    qp = qb + 1 + 3 * j; key = xs[b, qp]; r = np.where(xs[b, Kpos] == key)[0][0]
                    row = A[b, h, qp]; cV += row[Vpos[r]]; oV += row[Vpos].sum() - row[Vpos[r]]
                    cK += row[Kpos[r]]; oK += row[Kpos].sum() - row[Kpos[r]]; cnt += 1
            qps = qb + 1 + 3 * np.arange(m); rows = A[:, h][:, qps]  # B,m,S
            bos = rows[..., 0].mean(); slf = np.mean([A[:, h, qp, qp].mean() for qp in qps]); qsec = rows[..., qb:].sum(-1).mean() - slf
            print(f"probe layer {li} head {h}: BOS {bos:.3f} self {slf:.3f} other-question-section {qsec:.3f} pad {rows[..., 1:1+pad].sum(-1).mean():.3f}")
            offs = []
            for o in range(-a.line, R - a.line):
                c_ = t_ = 0.0
                for b in range(64):
                    for j in range(m):
                        qp = qb + 1 + 3 * j; r = np.where(xs[b, Kpos] == xs[b, qp])[0][0]
                        c_ += A[b, h, qp, Kpos[r] + o]; t_ += A[b, h, qp, Kpos + o].sum()
                offs.append(f"{o:+d}:{c_/cnt_:.2f}/{t_/cnt_:.2f}")
            print(f"probe layer {li} head {h}: offset-from-key correct/all-records " + ' '.join(offs))
            print(f"probe layer {li} head {h}: q->correct V {cV/cnt:.3f} other V {oV/cnt:.3f} correct K {cK/cnt:.3f} other K {oK/cnt:.3f}")
        # previous-token behaviour at record V positions
        pt = [A[:, h][:, Vpos, Kpos].mean() for h in range(H)]
        print(f"probe layer {li}: attention V-pos -> its key, per head: " + ' '.join(f'{v:.3f}' for v in pt))
