"""compare: registry-driven measures, keyword (dict) inputs with sequence pooling, paired inputs."""

import dataclasses

import pytest
import torch
from torch import nn

import repsim
from repsim.measures import registry
from repsim.networks.hooks import pool_features


class TinyEncoder(nn.Module):
    """A one-layer transformer encoder over token ids that ignores padding through the attention mask."""

    def __init__(self, vocab=20, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(16, d) * 0.1)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True), 1, enable_nested_tensor=False
        )
        self.head = nn.Linear(d, 3)

    def forward(self, input_ids, attention_mask):
        h = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        return {"logits": self.head(h[:, 0])}


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def _token_batches(pad_to, n_batches=3, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(2, 6, (b,), generator=g)
        ids = torch.randint(1, 20, (b, 6), generator=g)
        mask = (torch.arange(6) < lengths[:, None]).long()
        ids = ids * mask
        pad = torch.zeros(b, pad_to - 6, dtype=torch.long)
        out.append(
            {
                "input_ids": torch.cat([ids, pad], 1),
                "attention_mask": torch.cat([mask, pad], 1),
                "labels": torch.randint(0, 3, (b,), generator=g),
            }
        )
    return out


@pytest.mark.parametrize("pool", ["mask_mean", "first", "last"])
def test_padding_never_changes_a_pooled_feature(pool):
    model = TinyEncoder()
    short, long = _token_batches(6), _token_batches(10)
    feats = []
    for batches in (short, long):
        with repsim.FeatureHooks(model, ["encoder"], pool=pool) as hooks:
            rows = []
            for batch in batches:
                hooks.mask = batch["attention_mask"]
                model(batch["input_ids"], batch["attention_mask"])
                rows.append(hooks.pop()["encoder"])
        feats.append(torch.cat(rows))
    assert torch.allclose(feats[0], feats[1], atol=1e-5)
    # and through compare: extra padding gives the same CKA grid
    results = [
        repsim.compare(
            model,
            SmallEncoderView(model),
            b,
            layers_a=["encoder"],
            layers_b=["inner.encoder"],
            pool=pool,
            measures=["linear_cka"],
            progress=False,
        )
        .table["value"]
        .item()
        for b in (short, long)
    ]
    assert results[0] == pytest.approx(results[1], abs=1e-6)


class SmallEncoderView(nn.Module):
    """The same encoder under another module, so compare runs it as a second model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids, attention_mask)


def test_mask_pooling_rules():
    t = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert torch.equal(pool_features(t, "mask_mean", mask)[0], t[0, :2].mean(0))
    assert torch.equal(pool_features(t, "last", mask), torch.stack([t[0, 1], t[1, 2]]))
    assert torch.equal(pool_features(t, "first", mask), torch.stack([t[0, 0], t[1, 1]]))  # the first real token
    assert torch.equal(pool_features(t, "mask_mean"), t.mean(1))  # no mask: all tokens


def test_paired_inputs_of_one_model_give_cka_one():
    cnn = SmallCNN()
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(10, 1, 6, 6, generator=g) for _ in range(3)]
    # two input functions producing the same tensor (a copy, and x * 2 / 2)
    result = repsim.compare(
        cnn,
        cnn,
        images,
        layers_a=["conv"],
        layers_b=["conv"],
        measures=["linear_cka", "rsa"],
        inputs_a=lambda b: b.clone(),
        inputs_b=lambda b: (b * 2) / 2,
        progress=False,
    )
    assert result.table["value"].tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    # a loader yielding pairs: the second model sees a different resolution of the same images
    pairs = [(x, nn.functional.interpolate(x, scale_factor=2)) for x in images]
    paired = repsim.compare(
        cnn,
        SmallCNN(),
        pairs,
        layers_a=["conv"],
        layers_b=["conv"],
        measures=["linear_cka"],
        paired=True,
        progress=False,
    )
    assert 0 < paired.table["value"].item() < 1
    with pytest.raises(ValueError, match="either paired"):
        repsim.compare(cnn, cnn, pairs, paired=True, inputs_a=lambda b: b, progress=False)


def test_image_and_text_models_on_pairs():
    cnn, text = SmallCNN(), TinyEncoder()
    g = torch.Generator().manual_seed(4)
    tokens = _token_batches(6)
    images = [torch.rand(8, 1, 6, 6, generator=g) for _ in tokens]
    result = repsim.compare(
        cnn,
        text,
        list(zip(images, tokens, strict=True)),
        layers_a=["conv"],
        layers_b=["encoder"],
        pool="mask_mean",
        paired=True,
        measures=["linear_cka", "debiased_cka"],
        progress=False,
    )
    assert result.table["n"].tolist() == [24, 24]


def test_every_kind_of_registry_entry(monkeypatch):
    """Streaming-by-moments, streaming-by-accumulator, capped and functional entries all route from metadata."""
    base = registry.get_measure("linear_cka")
    capped = dataclasses.replace(base, name="test_capped_cka", streaming=False, from_moments=None, accumulator=None)
    calls = {}

    def agreement(x, y, labels=None):
        calls["labels"] = labels
        return (x.argmax(1) == y.argmax(1)).double().mean()

    functional = dataclasses.replace(
        base,
        name="test_agreement",
        fn=agreement,
        grid=None,
        streaming=False,
        from_moments=None,
        accumulator=None,
        needs_outputs=True,
        needs_labels=True,
    )
    monkeypatch.setitem(registry._REGISTRY, "test_capped_cka", capped)
    monkeypatch.setitem(registry._REGISTRY, "test_agreement", functional)
    model = TinyEncoder()
    batches = _token_batches(6)
    names = ["linear_cka", "debiased_cka", "minibatch_cka", "test_capped_cka", "test_agreement"]
    result = repsim.compare(
        model,
        SmallEncoderView(model),
        batches,
        layers_a=["embed", "encoder"],
        layers_b=["inner.encoder"],
        pool="mask_mean",
        measures=names,
        sample_cap=20,
        progress=False,
    )
    t = result.table
    assert result.measures == names
    lin = t[t.measure == "linear_cka"]["value"].to_numpy()
    assert lin == pytest.approx(t[t.measure == "test_capped_cka"]["value"].to_numpy(), abs=0.2)
    assert t[t.measure == "test_capped_cka"]["n"].tolist() == [20, 20]
    assert t[t.measure == "linear_cka"]["n"].tolist() == [24, 24]
    out = t[t.measure == "test_agreement"]
    assert out["layer_a"].tolist() == ["<output>"] and out["value"].item() == 1.0
    assert calls["labels"].shape == (20,)


def test_all_registered_names_are_accepted(monkeypatch):
    from repsim.pipeline.compare import available_measures

    # exactly the registry plus compare's own minibatch_cka, read when asked (not frozen at import):
    # a measure registered later is accepted and one removed is not
    assert available_measures() == sorted([*registry.registered_names(), "minibatch_cka"])
    monkeypatch.setitem(registry._REGISTRY, "test_late_cka", registry.get_measure("linear_cka"))
    assert "test_late_cka" in available_measures()
    monkeypatch.delitem(registry._REGISTRY, "test_late_cka")
    assert "test_late_cka" not in available_measures()
    with pytest.raises(ValueError, match="unknown measure"):
        repsim.compare(SmallCNN(), SmallCNN(), [torch.rand(4, 1, 6, 6)], measures=["nope"], progress=False)
