#!/usr/bin/env python3
"""Writes integration-tests/fixtures/minilm_embeddings.json: reference all-MiniLM-L6-v2 embeddings.

An independent float64 reimplementation of the sentence-transformers pipeline
(Transformer -> mean Pooling -> Normalize) over models/all-minilm-l6-v2/ (`make models`):

* weights read from model.safetensors with numpy only (no torch, no safetensors package);
* tokenised with the `tokenizers` package from tokenizer.json, special tokens added
  ([CLS] ... [SEP]) and truncated to max_seq_length from sentence_bert_config.json (256).
  tokenizer.json itself ships truncation at 128 and fixed padding to 128, which
  sentence-transformers does not use, so both are overridden here;
* BERT forward in float64 with the exact erf GELU;
* mean over all tokens (one unpadded sentence, so the attention mask is all ones), then L2 norm.

    python3 scripts/make_embedding_fixtures.py [--models-dir DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "all-minilm-l6-v2"
ROOT = Path(__file__).resolve().parent.parent

# A long real passage (Conan Doyle, "A Scandal in Bohemia", 1891, public domain): well past
# 256 word pieces, so the reference exercises truncation.
SCANDAL_IN_BOHEMIA = (
    "To Sherlock Holmes she is always the woman. I have seldom heard him mention her under any "
    "other name. In his eyes she eclipses and predominates the whole of her sex. It was not that "
    "he felt any emotion akin to love for Irene Adler. All emotions, and that one particularly, "
    "were abhorrent to his cold, precise but admirably balanced mind. He was, I take it, the most "
    "perfect reasoning and observing machine that the world has seen, but as a lover he would "
    "have placed himself in a false position. He never spoke of the softer passions, save with a "
    "gibe and a sneer. They were admirable things for the observer—excellent for drawing the veil "
    "from men's motives and actions. But for the trained reasoner to admit such intrusions into "
    "his own delicate and finely adjusted temperament was to introduce a distracting factor which "
    "might throw a doubt upon all his mental results. Grit in a sensitive instrument, or a crack "
    "in one of his own high-power lenses, would not be more disturbing than a strong emotion in a "
    "nature such as his. And yet there was but one woman to him, and that woman was the late "
    "Irene Adler, of dubious and questionable memory. I had seen little of Holmes lately. My "
    "marriage had drifted us away from each other. My own complete happiness, and the "
    "home-centred interests which rise up around the man who first finds himself master of his "
    "own establishment, were sufficient to absorb all my attention, while Holmes, who loathed "
    "every form of society with his whole Bohemian soul, remained in our lodgings in Baker "
    "Street, buried among his old books, and alternating from week to week between cocaine and "
    "ambition, the drowsiness of the drug, and the fierce energy of his own keen nature."
)

CASES = [
    # short, ordinary sentences (the first three are the classic all-MiniLM-L6-v2 example)
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "The cat sits outside.",
    "The new movie is awesome.",
    "The new movie is so great.",
    "Hyprstream is an Arrow Flight server for vector search.",
    "How do I reset my password?",
    "I forgot my login credentials and need to change them.",
    "The quarterly revenue grew by eight percent.",
    "Rain is expected in the afternoon.",
    # one word / very short
    "hello",
    "Hello",
    "HELLO",
    "a",
    "?",
    "embeddings",
    "unbelievably",
    "antidisestablishmentarianism",
    # mixed case
    "ThE qUiCk BrOwN fOx JuMpS oVeR tHe LaZy DoG",
    "iPhone, macOS, JavaScript and PostgreSQL",
    "NASA's JPL launched CubeSats in 2023.",
    # punctuation heavy
    "Wait... what?!?! No way -- really???",
    "(a) [b] {c} <d> 'e' \"f\" `g`",
    "foo@example.com, https://example.org/path?q=1&r=2#frag",
    "C++ && Rust || Go; x += 1; y->z = *p;",
    "!!!???...,,,;;;:::---___***",
    "don't won't can't shouldn't y'all",
    # numbers
    "3.14159265358979",
    "1,000,000 dollars and 0.5 cents",
    "Call +1 (555) 010-9999 before 23:59 on 2024-02-29.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "The answer is 42, not 41 or 43.",
    # unicode: accents, CJK, emoji, Cyrillic, others
    "Café crème brûlée à la façon de Noël",
    "Über schöne Straßen fährt der Bäcker.",
    "naïve résumé coöperate",
    "El niño comió jalapeños en São Paulo.",
    "我喜欢机器学习和自然语言处理。",
    "東京は日本の首都です。",
    "한국어 문장도 포함합니다.",
    "Привет, как дела? Москва — столица России.",
    "Ελληνικά γράμματα: αλφα βήτα γάμμα",
    "مرحبا بالعالم",
    "שלום עולם",
    "I love pizza 🍕🍕 and rockets 🚀!",
    "😀😃😄😁",
    "Mixed: English, français, 中文, русский, 🙂",
    "ﬁ ligature, full-width ＡＢＣ１２３, and the Å sign",
    # whitespace and control characters
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nin text",
    "multiple     internal      spaces",
    "zero\u200bwidth\u200bspace and soft\u00adhyphen",
    " ",
    "\t\n  \n",
    "",
    # special-token strings typed as text
    "[CLS] [SEP] [MASK] [PAD] [UNK]",
    # long inputs and the truncation boundary (hello is one word piece: n words -> n + 2 tokens)
    " ".join(["hello"] * 253),  # 255 tokens
    " ".join(["hello"] * 254),  # exactly 256 tokens
    " ".join(["hello"] * 255),  # 257 -> truncated to 256
    SCANDAL_IN_BOHEMIA,
    " ".join(["The game is afoot, Watson!"] * 60),
    "word " * 1000,
]


def load_safetensors(path: Path) -> dict:
    """Reads an F32 safetensors file with numpy; returns {name: float64 array}."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if info["dtype"] != "F32":
            continue  # embeddings.position_ids (I64) is not a weight
        arr = np.frombuffer(data, dtype="<f4", count=(end - start) // 4, offset=base + start)
        tensors[name] = arr.reshape(info["shape"]).astype(np.float64)
    return tensors


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    """Exact GELU, x * Phi(x), as BERT's "gelu" (not the tanh approximation)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def linear(x, W, b):
    return x @ W.T + b  # PyTorch Linear: weight is [out, in]


class MiniLM:
    def __init__(self, model_dir: Path):
        cfg = json.loads((model_dir / "config.json").read_text())
        self.eps = cfg["layer_norm_eps"]
        self.heads = cfg["num_attention_heads"]
        self.layers = cfg["num_hidden_layers"]
        self.hidden = cfg["hidden_size"]
        assert cfg["hidden_act"] == "gelu", cfg["hidden_act"]
        assert cfg["position_embedding_type"] == "absolute"
        pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
        assert pooling["pooling_mode_mean_tokens"] and not (
            pooling["pooling_mode_cls_token"] or pooling["pooling_mode_max_tokens"]
            or pooling["pooling_mode_mean_sqrt_len_tokens"]), pooling
        self.w = load_safetensors(model_dir / "model.safetensors")

    def forward(self, ids: list[int]) -> np.ndarray:
        w, n = self.w, len(ids)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        h, d = self.heads, self.hidden // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q = linear(x, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"])
            k = linear(x, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"])
            v = linear(x, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"])
            q, k, v = (t.reshape(n, h, d).transpose(1, 0, 2) for t in (q, k, v))  # [h, n, d]
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)  # [h, n, n]
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)  # softmax over keys
            ctx = (probs @ v).transpose(1, 0, 2).reshape(n, h * d)
            attn = linear(ctx, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
            x = layer_norm(attn + x, w[p + "attention.output.LayerNorm.weight"],
                           w[p + "attention.output.LayerNorm.bias"], self.eps)
            inter = gelu(linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]))
            out = linear(inter, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
            x = layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        pooled = x.mean(axis=0)  # attention mask is all ones
        return pooled / max(np.linalg.norm(pooled), 1e-12)  # torch.nn.functional.normalize


def load_tokenizer(model_dir: Path, max_len: int):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # tokenizer.json ships truncation=128 and fixed padding to 128; sentence-transformers
    # truncates at max_seq_length and pads only to the longest in a batch (here: one sentence).
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return tok


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-dir", default=os.environ.get("HYPRSTREAM_MODELS_DIR") or str(ROOT / "models"))
    ap.add_argument("--out", default=str(ROOT / "integration-tests" / "fixtures" / "minilm_embeddings.json"))
    args = ap.parse_args(argv)

    model_dir = Path(args.models_dir) / MODEL
    if not (model_dir / "model.safetensors").is_file():
        print(f"{model_dir}/model.safetensors not found: run `make models` first", file=sys.stderr)
        return 1
    import tokenizers

    t0 = time.time()
    max_len = json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"]
    tok = load_tokenizer(model_dir, max_len)
    model = MiniLM(model_dir)

    assert len(set(CASES)) == len(CASES), "duplicate case"
    cases = []
    for text in CASES:
        enc = tok.encode(text, add_special_tokens=True)
        ids = enc.ids
        assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
        assert len(ids) <= max_len and all(t == 0 for t in enc.type_ids)
        emb = model.forward(ids)
        cases.append({"text": text, "token_count": len(ids), "embedding": [sig7(v) for v in emb]})

    doc_head = {
        "model": MODEL,
        "reference": "float64 numpy forward (exact erf GELU) over model.safetensors; "
                     f"tokenizers {tokenizers.__version__}",
        "max_seq_length": max_len,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One case per line: reviewable diffs without a float per line.
    head = json.dumps(doc_head, ensure_ascii=False)[:-1]
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    out.write_text(f"{head}, \"cases\": [\n{body}\n]}}\n", encoding="utf-8")
    json.loads(out.read_text(encoding="utf-8"))  # well-formed
    print(f"wrote {len(cases)} cases to {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
