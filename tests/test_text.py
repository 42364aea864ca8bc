"""Language models as inputs: default layers of transformer stacks, text batches, sequence pools,
token-level features, hidden states, and the word alignment of two different tokenizers.

Every model is a tiny random transformers model built from a config (no download); the two
tokenizers are built in-process with the ``tokenizers`` library and split the same text differently.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import repsim
from repsim.networks import text as T
from repsim.networks.hooks import pool_features

SENTENCES = [
    "The cats sat.",
    "A dog ran to the cats, and the cats ran!",
    "Dogs sat on the mat.",
    "The mat is red",
    "Cats and dogs ran on a red mat.",
    "The dog sat.",
    "A red cat ran to a dog.",
    "Dogs, cats and mats.",
]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()


def word_tokenizer():
    """Whole words and punctuation marks, lower-cased, wrapped in [CLS] ... [SEP] (BERT-like)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in T.WORD_PATTERN.findall(s.lower())})
    vocab = {t: i for i, t in enumerate(SPECIAL + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def piece_tokenizer():
    """WordPiece over letters plus a few whole pieces, no special tokens (GPT-2-like): "cats" -> cat ##s."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["the", "cat", "##s", "dog", ".", ",", "!"]
    vocab = {t: i for i, t in enumerate(SPECIAL + pieces + list(LETTERS) + [f"##{c}" for c in LETTERS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def tokenizers():
    _quiet_transformers()
    return word_tokenizer(), piece_tokenizer()


def make(family: str, vocab: int = 64, seed: int = 0) -> nn.Module:
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2Model,
        LlamaConfig,
        LlamaModel,
        T5Config,
        T5EncoderModel,
    )

    _quiet_transformers()
    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = GPT2Config(
            n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        return GPT2Model(cfg).eval()
    if family == "bert":
        cfg = BertConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=vocab,
            max_position_embeddings=64,
        )
        return BertModel(cfg).eval()
    if family == "llama":
        cfg = LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=vocab,
        )
        return LlamaModel(cfg).eval()
    cfg = T5Config(num_layers=2, d_model=32, d_kv=16, num_heads=2, d_ff=64, vocab_size=vocab)
    return T5EncoderModel(cfg).eval()


EXPECTED_LAYERS = {
    "gpt2": ["drop", "h.0", "h.1", "ln_f"],
    "bert": ["embeddings", "encoder.layer.0", "encoder.layer.1"],
    "llama": ["embed_tokens", "layers.0", "layers.1", "norm"],
    "t5": ["encoder.embed_tokens", "encoder.block.0", "encoder.block.1", "encoder.final_layer_norm"],
}


@pytest.mark.parametrize("family", list(EXPECTED_LAYERS))
def test_default_layers_are_the_blocks_embeddings_and_final_norm_and_all_run(family, tokenizers):
    model = make(family)
    layers = repsim.default_layers(model)
    assert layers == EXPECTED_LAYERS[family]
    modules = dict(model.named_modules())
    assert not any(isinstance(modules[name], nn.ModuleList) for name in layers)
    batches = repsim.text_batches(SENTENCES, tokenizers[0], batch_size=3)
    result = repsim.compare(model, model, batches, pool="mask_mean", measures=["linear_cka"], progress=False)
    assert result.layers_a == layers  # every default layer ran ("did not run" would have raised)
    diagonal = result.matrix().to_numpy().diagonal()
    assert diagonal == pytest.approx(1.0, abs=1e-9)


def test_the_issue_case_gpt2_against_bert_with_default_layers(tokenizers):
    batches = repsim.text_batches(SENTENCES, tokenizers[0], batch_size=4)
    result = repsim.compare(
        make("gpt2"), make("bert"), batches, pool="mask_mean", measures=["linear_cka"], progress=False
    )
    assert result.matrix().shape == (4, 3)
    assert result.table["value"].between(0, 1).all()
    assert (result.table["n"] == len(SENTENCES)).all()


def test_default_layers_of_models_without_a_block_list_are_unchanged():
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    assert repsim.default_layers(cnn) == ["0", "2"]

    class Blocks(nn.Module):  # a ModuleList of one block is not a stack: its item, never the list
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(2, 2)
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2))])

    assert repsim.default_layers(Blocks()) == ["stem", "blocks.0"]


def test_text_batches_order_padding_truncation_and_offsets(tokenizers):
    words, pieces = tokenizers
    batches, offsets = repsim.text_batches(SENTENCES, pieces, batch_size=3, return_offsets=True)
    assert [b["input_ids"].shape[0] for b in batches] == [3, 3, 2]
    first = pieces(SENTENCES[0])["input_ids"]
    assert batches[0]["input_ids"][0, : len(first)].tolist() == first  # the texts' order, right padding
    assert batches[0]["attention_mask"][0].tolist() == [1] * len(first) + [0] * (batches[0]["input_ids"].shape[1] - 7)
    assert "position_ids" not in batches[0]
    assert sorted(batches[0]) == ["attention_mask", "input_ids"]  # all-zero token_type_ids left out
    # "The cats sat." -> the | cat ##s | s ##a ##t | .   (character spans of each token)
    assert offsets[0][0, :7].tolist() == [[0, 3], [4, 7], [7, 8], [9, 10], [10, 11], [11, 12], [12, 13]]
    left = repsim.text_batches(SENTENCES, pieces, batch_size=3, padding_side="left", pad_to=40)
    assert left[0]["input_ids"].shape[1] == 40 and left[0]["attention_mask"][0, -7:].tolist() == [1] * 7
    assert left[0]["position_ids"][0, -7:].tolist() == list(range(7))  # counted over the real tokens
    cut = repsim.text_batches(SENTENCES, words, max_length=4)
    assert cut[0]["input_ids"].shape[1] == 4
    again = repsim.text_batches(SENTENCES, pieces, batch_size=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))


@pytest.mark.parametrize(
    ("texts", "match"),
    [("The cats sat.", "list of strings"), (["ok", 3], r"texts\[1\]"), ([], "empty"), (["ok", "  "], "whitespace")],
)
def test_text_batches_validates_texts(texts, match, tokenizers):
    with pytest.raises(ValueError, match=match):
        repsim.text_batches(texts, tokenizers[0])


def test_text_batches_validates_options(tokenizers):
    with pytest.raises(ValueError, match="padding_side"):
        repsim.text_batches(SENTENCES, tokenizers[0], padding_side="middle")
    with pytest.raises(ValueError, match="pad_to"):
        repsim.text_batches(SENTENCES, tokenizers[0], pad_to=3)
    with pytest.raises(ValueError, match="batch_size"):
        repsim.text_batches(SENTENCES, tokenizers[0], batch_size=0)


def test_sequence_pools_by_hand():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    t_padded = torch.where(mask.bool()[..., None], t, torch.tensor(1e9))  # padding values must never matter
    rows = [t[i, mask[i].bool()] for i in range(3)]
    assert torch.equal(pool_features(t_padded, "mask_max", mask), torch.stack([r.amax(0) for r in rows]))
    assert torch.allclose(pool_features(t_padded, "mask_mean", mask), torch.stack([r.mean(0) for r in rows]))
    assert torch.equal(pool_features(t_padded, "first", mask), torch.stack([r[0] for r in rows]))
    assert torch.equal(pool_features(t_padded, "last", mask), torch.stack([r[-1] for r in rows]))
    assert torch.equal(pool_features(t_padded, "tokens", mask), torch.cat(rows))
    nan_pads = torch.where(mask.bool()[..., None], t, torch.nan)  # a fully masked attention row's NaN stays out
    assert torch.isfinite(pool_features(nan_pads, "mask_mean", mask)).all()
    with pytest.raises(ValueError, match="pool='tokens' takes"):
        pool_features(torch.randn(3, 4), "tokens", mask)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("pool", ["mask_mean", "mask_max", "first", "last"])
def test_pooled_features_do_not_change_with_extra_padding_on_either_side(family, pool, tokenizers):
    model = make(family)
    layers = repsim.default_layers(model)
    plain = repsim.sentence_features(
        model, repsim.text_batches(SENTENCES, tokenizers[1]), layers=layers, pool=pool, progress=False
    )
    for side in ("right", "left"):  # left padding: position ids counted over the real tokens
        padded = repsim.text_batches(SENTENCES, tokenizers[1], batch_size=3, padding_side=side, pad_to=40)
        feats = repsim.sentence_features(model, padded, layers=layers, pool=pool, progress=False)
        for name in layers:
            assert torch.allclose(feats[name], plain[name], atol=1e-6, rtol=0), (side, name)


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_token_features_are_the_stacked_non_pad_hidden_states(family, tokenizers):
    model = make(family)
    batches = repsim.text_batches(SENTENCES, tokenizers[0], batch_size=3)
    feats, sentence_ids = repsim.token_features(model, batches, layers="hidden_states", progress=False)
    with torch.no_grad():
        outs = [model(**b, output_hidden_states=True).hidden_states for b in batches]
    masks = [b["attention_mask"].bool() for b in batches]
    assert list(feats) == [f"hidden_states.{i}" for i in range(3)]
    for i in range(3):
        expected = torch.cat([out[i][m] for out, m in zip(outs, masks, strict=True)])
        assert torch.equal(feats[f"hidden_states.{i}"], expected)
    counts = torch.cat([m.sum(1) for m in masks])
    assert torch.equal(sentence_ids, torch.arange(len(SENTENCES)).repeat_interleave(counts))


@pytest.mark.parametrize(
    ("family", "pairs"),
    [
        ("gpt2", {"hidden_states.0": "drop", "hidden_states.1": "h.0", "hidden_states.2": "ln_f"}),
        (
            "bert",
            {
                "hidden_states.0": "embeddings",
                "hidden_states.1": "encoder.layer.0",
                "hidden_states.2": "encoder.layer.1",
            },
        ),
        ("llama", {"hidden_states.0": "embed_tokens", "hidden_states.1": "layers.0", "hidden_states.2": "norm"}),
    ],
)
def test_hidden_states_equal_the_hooked_blocks_where_they_coincide(family, pairs, tokenizers):
    model = make(family)
    batches = repsim.text_batches(SENTENCES, tokenizers[0], batch_size=4)
    states = repsim.sentence_features(model, batches, layers="hidden_states", progress=False)
    hooked = repsim.sentence_features(model, batches, layers=list(pairs.values()), progress=False)
    for state, module in pairs.items():
        assert torch.allclose(states[state], hooked[module], atol=1e-6, rtol=0), (state, module)
    result = repsim.compare(
        model, model, batches, layers_a="hidden_states", pool="mask_mean", measures=["linear_cka"], progress=False
    )
    assert result.layers_a == list(states) and result.matrix().to_numpy().diagonal() == pytest.approx(1.0)
    other = make("bert" if family != "bert" else "gpt2")
    cross = repsim.compare(
        model, other, batches, layers_a="hidden_states", layers_b=None, measures=["linear_cka"], progress=False
    )
    assert cross.layers_b == repsim.default_layers(other)
    with pytest.raises(ValueError, match="both sides or neither"):
        repsim.compare(model, model, batches, layers_a="hidden_states", layers_b=["h.0"], progress=False)


def test_compare_pool_tokens_is_linear_cka_of_the_token_features(tokenizers):
    a, b = make("bert"), make("llama", seed=1)
    batches = repsim.text_batches(SENTENCES, tokenizers[0], batch_size=3)
    result = repsim.compare(a, b, batches, pool="tokens", measures=["linear_cka", "rsa"], sample_cap=20, progress=False)
    fa, ids = repsim.token_features(a, batches, progress=False)
    fb, _ = repsim.token_features(b, batches, progress=False)
    n_tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    assert ids.shape[0] == n_tokens
    got = result.table.set_index(["layer_a", "layer_b", "measure"])
    for la, x in fa.items():
        for lb, y in fb.items():
            row = got.loc[(la, lb, "linear_cka")]
            assert row["n"] == n_tokens
            assert row["value"] == pytest.approx(float(repsim.linear_cka(x.double(), y.double())), abs=1e-9)
            capped = got.loc[(la, lb, "rsa")]  # an all-samples measure: the first sample_cap tokens
            assert capped["n"] == 20
            assert capped["value"] == pytest.approx(float(repsim.rsa(x[:20].double(), y[:20].double())), abs=1e-9)


def test_compare_pool_tokens_refuses_different_tokens_and_bad_layers(tokenizers):
    words, pieces = tokenizers
    a = make("bert")
    pairs = list(zip(repsim.text_batches(SENTENCES, words), repsim.text_batches(SENTENCES, pieces), strict=True))
    with pytest.raises(ValueError, match=r"attention masks differ.*unit='word'"):
        repsim.compare(a, make("gpt2"), pairs, paired=True, pool="tokens", measures=["linear_cka"], progress=False)
    batches = repsim.text_batches(SENTENCES, words)
    with pytest.raises(ValueError, match="pool='tokens' takes"):
        repsim.compare(a, a, batches, layers_a=["pooler"], pool="tokens", progress=False)


def test_compare_pool_tokens_permutes_and_resamples_whole_sentences(tokenizers):
    """inference on token samples moves whole sentences: permutation_test and bootstrap with blocks=sentence ids."""
    words, _ = tokenizers
    a, b = make("bert"), make("llama")
    batches = repsim.text_batches(SENTENCES, words, batch_size=2)
    spec = {"permutations": 30, "seed": 3}
    res = repsim.compare(a, b, batches, layers_a=["encoder.layer.0"], layers_b=["layers.0"], pool="tokens",
                         measures=["linear_cka"], inference=spec, progress=False)  # fmt: skip
    fa, ids = repsim.token_features(a, batches, layers=["encoder.layer.0"], progress=False)
    fb, _ = repsim.token_features(b, batches, layers=["layers.0"], progress=False)
    expected = repsim.permutation_test(
        fa["encoder.layer.0"], fb["layers.0"], "linear_cka", n_permutations=30, seed=3, blocks=ids
    )
    assert res.table["p_value"].iloc[0] == pytest.approx(expected.p_value)
    # intervals resample whole sentences too: the same as bootstrap(blocks=sentence ids)
    boot = repsim.compare(a, b, batches, layers_a=["encoder.layer.0"], layers_b=["layers.0"], pool="tokens",
                          measures=["linear_cka"], inference={"bootstrap": 20, "seed": 3}, progress=False)  # fmt: skip
    expected = repsim.bootstrap(fa["encoder.layer.0"], fb["layers.0"], "linear_cka", n_resamples=20, seed=3, blocks=ids)
    naive = repsim.bootstrap(fa["encoder.layer.0"], fb["layers.0"], "linear_cka", n_resamples=20, seed=3)
    row = boot.table.iloc[0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((expected.ci_low, expected.ci_high), abs=1e-9)
    assert (row["ci_low"], row["ci_high"]) != pytest.approx((naive.ci_low, naive.ci_high), abs=1e-6)


def test_word_features_equal_a_hand_computed_word_pooling(tokenizers):
    words, pieces = tokenizers
    bert, gpt2 = make("bert"), make("gpt2")
    text = ["The cats sat."]  # words: The | cats | sat | .
    fw, units_w = repsim.word_features(bert, words, text, layers="hidden_states", progress=False)
    fp, units_p = repsim.word_features(gpt2, pieces, text, layers="hidden_states", progress=False)
    assert units_w["text"].tolist() == units_p["text"].tolist() == ["The", "cats", "sat", "."]
    assert words.convert_ids_to_tokens(words(text[0])["input_ids"]) == ["[CLS]", "the", "cats", "sat", ".", "[SEP]"]
    assert pieces.convert_ids_to_tokens(pieces(text[0])["input_ids"]) == ["the", "cat", "##s", "s", "##a", "##t", "."]
    with torch.no_grad():
        hw = bert(**words(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        hp = gpt2(**pieces(text, return_tensors="pt"), output_hidden_states=True).hidden_states
    word_tokens = [[1], [2], [3], [4]]  # [CLS] and [SEP] have no characters
    piece_tokens = [[0], [1, 2], [3, 4, 5], [6]]
    for i in range(3):
        expected_w = torch.stack([hw[i][0, idx].mean(0) for idx in word_tokens])
        expected_p = torch.stack([hp[i][0, idx].mean(0) for idx in piece_tokens])
        assert torch.allclose(fw[f"hidden_states.{i}"], expected_w, atol=1e-6, rtol=0)
        assert torch.allclose(fp[f"hidden_states.{i}"], expected_p, atol=1e-6, rtol=0)
    chars, units_c = repsim.word_features(gpt2, pieces, text, layers=["ln_f"], unit="char", progress=False)
    assert "".join(units_c["text"]) == "Thecatssat."
    with torch.no_grad():
        last = gpt2(**pieces(text, return_tensors="pt")).last_hidden_state[0]
    assert torch.allclose(chars["ln_f"][3], last[1], atol=1e-6)  # "c" of "cats" lies in the token "cat"
    assert torch.allclose(chars["ln_f"][6], last[2], atol=1e-6)  # its "s" in "##s"
    assert torch.allclose(chars["ln_f"][9], last[5], atol=1e-6)  # "t" of "sat" in "##t"


def test_compare_texts_aligns_two_tokenizers_on_words(tokenizers):
    words, pieces = tokenizers
    bert, gpt2 = make("bert"), make("gpt2")
    result = repsim.compare_texts(bert, words, gpt2, pieces, SENTENCES, unit="word", progress=False)
    fw, uw = repsim.word_features(bert, words, SENTENCES, progress=False)
    fp, up = repsim.word_features(gpt2, pieces, SENTENCES, progress=False)
    assert uw[["sentence", "unit"]].equals(up[["sentence", "unit"]])  # nothing truncated: every word on both
    n_words = sum(len(T.WORD_PATTERN.findall(s)) for s in SENTENCES)
    assert len(uw) == n_words and (result.table["n"] == n_words).all()
    value = result.table.query("layer_a == 'encoder.layer.1' and layer_b == 'h.1' and measure == 'linear_cka'")
    assert value["value"].item() == pytest.approx(float(repsim.linear_cka(fw["encoder.layer.1"], fp["h.1"])))
    for unit in ("sentence", "char"):
        table = repsim.compare_texts(bert, words, gpt2, pieces, SENTENCES, unit=unit, progress=False).table
        assert table["value"].notna().all()
    same = repsim.compare_texts(bert, words, bert, None, SENTENCES, unit="token", measures="linear_cka", progress=False)
    assert same.matrix().to_numpy().diagonal() == pytest.approx(1.0)


def test_compare_texts_validates(tokenizers):
    words, pieces = tokenizers
    bert, gpt2 = make("bert"), make("gpt2")
    with pytest.raises(ValueError, match="unit must be one of"):
        repsim.compare_texts(bert, words, gpt2, pieces, SENTENCES, unit="paragraph")
    with pytest.raises(ValueError, match="unit='word'"):
        repsim.compare_texts(bert, words, gpt2, pieces, SENTENCES, unit="token", progress=False)
    with pytest.raises(ValueError, match="unknown measure"):
        repsim.compare_texts(bert, words, gpt2, pieces, SENTENCES, measures=["nope"])
    with pytest.raises(ValueError, match="labels or model outputs"):
        repsim.compare_texts(bert, words, gpt2, pieces, SENTENCES, measures=["jsd"])
    with pytest.raises(ValueError, match="list of strings"):
        repsim.compare_texts(bert, words, gpt2, pieces, "The cats sat.")
    with pytest.raises(ValueError, match="pool must be one of"):
        repsim.sentence_features(bert, repsim.text_batches(SENTENCES, words), pool="mean")


def test_the_core_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, repsim, repsim.networks.text; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "False"


# torchrun: two gloo processes, each reading its shard of the batches, equal one process.


class _Tokens:
    """A plain ``tokenizers`` tokenizer behind the call of a Hugging Face one (no transformers import)."""

    model_input_names = ("input_ids", "attention_mask")
    padding_side = "right"
    pad_token_id = 0

    def __init__(self):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        pieces = ["[PAD]", "[UNK]", "the", "cat", "##s", "dog", ".", ",", "!"]
        vocab = {t: i for i, t in enumerate(pieces + list(LETTERS) + [f"##{c}" for c in LETTERS])}
        self.tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        self.tok.normalizer = normalizers.Lowercase()
        self.tok.pre_tokenizer = pre_tokenizers.Whitespace()

    def __call__(self, texts, return_offsets_mapping=False, **kwargs):
        enc = self.tok.encode_batch(texts)
        out = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets for e in enc]
        return out


class _TokenModel(nn.Module):
    def __init__(self, seed=3):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(80, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(2))

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h) + h.cumsum(1) / 10  # mixes tokens, so padding at the end is harmless
        return h


def _run_text(distributed):
    model, tok = _TokenModel(), _Tokens()
    batches = repsim.text_batches(SENTENCES, tok, batch_size=3)
    loader = repsim.core.distributed.shard(batches) if distributed else batches
    tokens = repsim.token_features(model, loader, progress=False)
    words = repsim.word_features(model, tok, SENTENCES, batch_size=3, progress=False)
    sentences = repsim.sentence_features(model, loader, progress=False)
    grid = repsim.compare(  # token rows: streaming CKA over all, RSA over the first 25 in one process's order
        model, _TokenModel(4), loader, pool="tokens", measures=["linear_cka", "rsa"], sample_cap=25, progress=False
    ).table
    return tokens, words, sentences, grid


def _worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_run_text(True), result_file + str(rank))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_token_and_word_features_under_two_gloo_processes_equal_one_process():
    assert repsim.default_layers(_TokenModel()) == ["embed", "blocks.0", "blocks.1"]
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, init_file, result_file), nprocs=2, join=True)
        got = [torch.load(result_file + str(r), weights_only=False) for r in range(2)]
    (tok_feats, tok_ids), (word_feats, units), sent_feats, grid = _run_text(False)
    for (g_tok, g_ids), (g_words, g_units), g_sent, g_grid in got:
        assert (g_grid["n"] == grid["n"]).all() and g_grid["value"].to_numpy() == pytest.approx(
            grid["value"], abs=1e-10
        )
        assert torch.equal(g_ids, tok_ids)
        assert g_units.equals(units)
        for name in tok_feats:
            assert torch.equal(g_tok[name], tok_feats[name])
            assert torch.equal(g_words[name], word_feats[name])
            assert torch.equal(g_sent[name], sent_feats[name])
