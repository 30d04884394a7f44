#!/usr/bin/python3
"""Train qllm's default model: a small Llama-2 (RMSNorm, RoPE, grouped-query attention, SwiGLU,
untied output) on the King James Bible from Debian's bible-kjv-text package (public domain).

Writes, into OUT (default: models/tiny-kjv next to the repository root):
  config.json, generation_config.json, model.safetensors (F16), tokenizer.model
      a Hugging Face Llama directory, which `qllm convert` turns into the shipped GGUF;
  reference_logits.bin, heldout_argmax.bin, reference_perplexity.json
      PyTorch's f32 logits for fixed prompts at every position, its greedy next token on held-out
      windows, and its held-out perplexity (all from the F16-rounded weights that were exported):
      an independent reference for qllm's forward pass;
  train_log.tsv
      the loss curve.
and tests/data/kjv-heldout.txt (the held-out chapters, never trained on).

Deterministic given --seed and --threads: same corpus, same sentencepiece model, same batches, same
weights. Only Debian's python3-torch, python3-sentencepiece and python3-numpy; no network.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Prompts whose logits are written as the reference (every position), and that tests replay.
REFERENCE_PROMPTS = [
    "In the beginning God created the heaven and the earth.",
    "And the LORD said unto Moses,",
    "Blessed are the meek: for they shall inherit the earth.",
    "For God so loved the world, that he gave his only begotten Son",
]


def read_kjv():
    """The whole KJV as [(book_chapter, text)], one verse per line, from the `bible` program of the
    bible-kjv package (its data file is bible-kjv-text); -l100000 keeps every verse on one line."""
    out = subprocess.run(["bible", "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters, name, verses, cur = [], None, [], None
    for line in out.split("\n"):
        s = line.strip()
        if not s:
            continue
        if not line.startswith(" "):  # a chapter heading such as "Genesis 1"
            if name is not None:
                if cur is not None:
                    verses.append(cur)
                chapters.append((name, "\n".join(verses)))
            name, verses, cur = s, [], None
            continue
        head, _, rest = s.partition(" ")
        if not head.isdigit():
            raise SystemExit(f"unexpected line in the bible output: {line!r}")
        if cur is not None:
            verses.append(cur)
        cur = rest
    if cur is not None:
        verses.append(cur)
    if name is not None:
        chapters.append((name, "\n".join(verses)))
    return chapters


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    """One Llama decoder layer with Hugging Face's parameter names and rotate-half RoPE."""

    def __init__(self, c):
        super().__init__()
        d, hd = c["hidden_size"], c["hidden_size"] // c["num_attention_heads"]
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], hd
        self.input_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(d, c["rms_norm_eps"])
        self.q_proj = nn.Linear(d, self.nh * hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nh * hd, d, bias=False)
        self.gate_proj = nn.Linear(d, c["intermediate_size"], bias=False)
        self.up_proj = nn.Linear(d, c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], d, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, self.nh * self.hd)
        x = x + self.o_proj(y)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c["num_hidden_layers"]) if n.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def rope(self, t):
        hd = self.c["hidden_size"] // self.c["num_attention_heads"]
        inv = 1.0 / (self.c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos().float(), ang.sin().float()

    def forward(self, ids):
        cos, sin = self.rope(ids.shape[1])
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))

    def hf_state(self):
        """Parameters under Hugging Face LlamaForCausalLM names."""
        out = {"model.embed_tokens.weight": self.embed_tokens.weight}
        for i, L in enumerate(self.layers):
            p = f"model.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[p + f"self_attn.{n}.weight"] = getattr(L, n).weight
            for n in ("gate_proj", "up_proj", "down_proj"):
                out[p + f"mlp.{n}.weight"] = getattr(L, n).weight
            out[p + "input_layernorm.weight"] = L.input_layernorm.weight
            out[p + "post_attention_layernorm.weight"] = L.post_attention_layernorm.weight
        out["model.norm.weight"] = self.norm.weight
        out["lm_head.weight"] = self.lm_head.weight
        return out


def write_safetensors(path, tensors):
    """safetensors: u64 header length, JSON header (dtype, shape, data_offsets), then the data."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        a = t.detach().to(torch.float16).contiguous().numpy()
        b = a.tobytes()
        header[name] = {"dtype": "F16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def write_references(model, sp, out, held, heldout_path):
    """reference_logits.bin: "QLRF", u32 count; per prompt: u32 n_tokens, u32 n_vocab, i32 ids[n],
    f32 logits[n][n_vocab]. heldout_argmax.bin: "QLAM", u32 count; per window: u32 n, i32 ids[n],
    i32 argmax[n] (PyTorch's greedy next token at every position of held-out windows of 256).
    reference_perplexity.json: perplexity of the held-out file, windows as qllm perplexity -c 256.
    All little endian, from the model as exported (F16-rounded weights)."""
    model.eval()
    vocab = model.c["vocab_size"]
    with torch.no_grad():
        with open(os.path.join(out, "reference_logits.bin"), "wb") as f:
            f.write(b"QLRF" + struct.pack("<I", len(REFERENCE_PROMPTS)))
            for p in REFERENCE_PROMPTS:
                ids = [sp.bos_id()] + sp.encode(p)
                lg = model(torch.tensor([ids]))[0].float().numpy()
                f.write(struct.pack("<II", len(ids), vocab))
                f.write(np.asarray(ids, dtype="<i4").tobytes())
                f.write(lg.astype("<f4").tobytes())
        win, n_win = 256, 8
        with open(os.path.join(out, "heldout_argmax.bin"), "wb") as f:
            f.write(b"QLAM" + struct.pack("<I", n_win))
            for w in range(n_win):
                ids = held[w * win:(w + 1) * win].tolist()
                am = model(torch.tensor([ids]))[0].argmax(-1).tolist()
                f.write(struct.pack("<I", len(ids)))
                f.write(np.asarray(ids, dtype="<i4").tobytes())
                f.write(np.asarray(am, dtype="<i4").tobytes())
        # perplexity over the held-out file as `qllm perplexity -c 256` computes it: the whole text
        # encoded once with BOS, windows of 256 whose first token is BOS, second half scored
        text = open(heldout_path).read()
        toks = [sp.bos_id()] + sp.encode(text)
        nll, count, ctx = 0.0, 0, 256
        for c in range(len(toks) // ctx):
            w = toks[c * ctx:(c + 1) * ctx]
            w[0] = sp.bos_id()
            lp = torch.log_softmax(model(torch.tensor([w]))[0].double(), -1)
            for i in range(ctx // 2, ctx - 1):
                nll -= lp[i, w[i + 1]].item()
                count += 1
        with open(os.path.join(out, "reference_perplexity.json"), "w") as f:
            json.dump({"file": "tests/data/kjv-heldout.txt", "ctx": ctx, "tokens_scored": count,
                       "perplexity": math.exp(nll / count)}, f, indent=2)
            f.write("\n")
        print(f"held-out perplexity (ctx {ctx}, {count} tokens): {math.exp(nll / count):.4f}", flush=True)
        ids = [sp.bos_id()] + sp.encode(REFERENCE_PROMPTS[0])
        for _ in range(48):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        print("sample (greedy):", sp.decode(ids), flush=True)


def load_exported(out):
    """The model as exported to OUT (config.json + model.safetensors), in f32."""
    cfg = json.load(open(os.path.join(out, "config.json")))
    model = Llama(cfg)
    raw = open(os.path.join(out, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    state = model.hf_state()
    with torch.no_grad():
        for name, p in state.items():
            e = header[name]
            b, en = e["data_offsets"]
            a = np.frombuffer(raw[8 + n + b:8 + n + en], dtype="<f2").reshape(e["shape"])
            p.copy_(torch.from_numpy(a.astype(np.float32)))
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "tiny-kjv"))
    ap.add_argument("--heldout", default=os.path.join(ROOT, "tests", "data", "kjv-heldout.txt"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--references-only", action="store_true",
                    help="recompute the reference files from OUT's exported model; train nothing")
    args = ap.parse_args()
    if args.references_only:
        torch.set_num_threads(args.threads)
        sp = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "tokenizer.model"))
        held = []
        for block in open(args.heldout).read().split("\n\n"):
            name, _, text = block.strip("\n").partition("\n")
            held += [sp.bos_id()] + sp.encode(text)
        write_references(load_exported(args.out), sp, args.out, torch.tensor(held, dtype=torch.long), args.heldout)
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)

    # Corpus: every 40th chapter (starting at the 20th) is held out.
    chapters = read_kjv()
    train_ch = [c for i, c in enumerate(chapters) if i % 40 != 19]
    held_ch = [c for i, c in enumerate(chapters) if i % 40 == 19]
    corpus = os.path.join(args.out, "corpus-train.txt")
    with open(corpus, "w") as f:
        for _, t in train_ch:
            f.write(t + "\n")
    os.makedirs(os.path.dirname(args.heldout), exist_ok=True)
    with open(args.heldout, "w") as f:
        f.write("\n\n".join(f"{n}\n{t}" for n, t in held_ch) + "\n")
    print(f"corpus: {len(chapters)} chapters, {len(train_ch)} train, {len(held_ch)} held out", flush=True)

    # Tokenizer: sentencepiece BPE with byte fallback, configured as Llama-2's.
    prefix = os.path.join(args.out, "tokenizer")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=args.vocab, model_type="bpe", byte_fallback=True,
        split_digits=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, max_sentence_length=1 << 16,
        minloglevel=2)
    os.replace(prefix + ".model", os.path.join(args.out, "tokenizer.model"))
    os.remove(prefix + ".vocab")
    os.remove(corpus)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "tokenizer.model"))

    # Every chapter is one document: BOS, its verses (one per line).
    stream = []
    for _, t in train_ch:
        stream += [sp.bos_id()] + sp.encode(t)
    data = torch.tensor(stream, dtype=torch.long)
    print(f"train tokens: {len(stream)}", flush=True)
    held = []
    for _, t in held_ch:
        held += [sp.bos_id()] + sp.encode(t)
    held = torch.tensor(held, dtype=torch.long)

    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": args.dim, "intermediate_size": args.hidden, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": args.ctx,
        "vocab_size": args.vocab, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    model = Llama(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}", flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    warm = max(1, args.steps // 30)

    def lr_at(s):
        if s < warm:
            return args.lr * (s + 1) / warm
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))

    def held_loss():
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(held) - 1, args.seq):
                x = held[i:i + args.seq + 1]
                if len(x) < 2:
                    break
                lg = model(x[None, :-1])
                tot += F.cross_entropy(lg[0], x[1:], reduction="sum").item()
                n += len(x) - 1
        model.train()
        return tot / n

    log = open(os.path.join(args.out, "train_log.tsv"), "w")
    log.write("step\tlr\ttrain_loss\theldout_loss\telapsed_s\n")
    t0, run = time.time(), None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[s:s + args.seq + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = loss.item() if run is None else 0.98 * run + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            hl = held_loss() if (step % 500 == 0 or step == args.steps - 1) else float("nan")
            el = time.time() - t0
            log.write(f"{step}\t{lr_at(step):.6g}\t{run:.4f}\t{hl:.4f}\t{el:.0f}\n")
            log.flush()
            print(f"step {step} loss {run:.3f} held {hl:.3f} {el:.0f}s "
                  f"({(step + 1) * args.batch * args.seq / max(el, 1e-9):.0f} tok/s)", flush=True)

    # Export the F16-rounded weights; the reference logits come from exactly those.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    final_held = held_loss()
    print(f"final held-out loss (F16 weights): {final_held:.4f} nats/token, ppl {math.exp(final_held):.2f}", flush=True)
    write_safetensors(os.path.join(args.out, "model.safetensors"), model.hf_state())
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "max_length": args.ctx}, f, indent=2)
        f.write("\n")

    write_references(model, sp, args.out, held, args.heldout)
    log.write(f"# final heldout_loss_f16 {final_held:.4f}\n")
    log.close()


if __name__ == "__main__":
    sys.exit(main())
