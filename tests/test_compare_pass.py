"""One comparison, one Pass (issue 30 item 1) and the compare-pipeline defects of issue 32: the README's
example runs, a failing cell is recorded without discarding the rest, refusals name the measure, the layer
pair and the user's n, text batches get a mask-aware pool, biased CKA's chance warning comes once."""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import repsim
from repsim.measures import registry


class Mlp(nn.Module):
    """Layers of widths 8 (``narrow``) and 40 (``wide``, of full rank: after a tanh) on 6 inputs."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.narrow = nn.Linear(6, 8)
        self.wide = nn.Sequential(nn.Linear(8, 40), nn.Tanh())

    def forward(self, x):
        return self.wide(self.narrow(x))


class Conv(nn.Module):
    """Flattened maps (c1: 8 x 12 x 12 = 1152) much wider than n, and a narrow head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.c1(x).relu().mean((2, 3)))


class Tokens(nn.Module):
    """A keyword-input sequence model: (n, T) token ids -> (n, T, 6) states through ``embed`` and ``mix``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(20, 6)
        self.mix = nn.Linear(6, 6)

    def forward(self, input_ids, attention_mask=None):
        return self.mix(self.embed(input_ids))


def _vectors(n=40, batch=10):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 6, generator=g) for _ in range(n // batch)]


def _images(n=60, batch=20):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 12, 12, generator=g)), batch_size=batch)


def test_a_failing_cell_is_recorded_and_the_rest_kept():
    # plain CCA needs n > rank_x + rank_y: at n = 40, (narrow, narrow) has 8 + 8, (wide, *) has 40 + ...
    res = repsim.compare(Mlp(0), Mlp(1), _vectors(), layers=["narrow", "wide"], measures=["mean_cca", "linear_cka"],
                         progress=False)  # fmt: skip
    t = res.table.set_index(["measure", "layer_a", "layer_b"])
    assert math.isfinite(t.loc[("mean_cca", "narrow", "narrow"), "value"])
    failed = t.loc[("mean_cca", "wide", "wide")]
    assert math.isnan(failed["value"])
    assert "mean_cca on (wide, wide) at n = 40" in failed["error"] and "ranks together" in failed["error"]
    cka = res.table[res.table["measure"] == "linear_cka"]
    assert cka["value"].notna().all() and cka["error"].isna().all()


def test_bootstrap_refuses_half_samples_svcca_cannot_run_on():
    # issue 32's minimal case: svcca runs at n = 512, not on the half-samples (m = 256) of the interval
    torch.manual_seed(0)
    x, y = torch.randn(512, 64).relu(), torch.randn(512, 512).relu()
    assert math.isfinite(float(repsim.measure(x, y, "svcca")))
    with pytest.raises(ValueError, match=r"bootstrap of svcca at n = 512.*m = 256.*Cause: CCA needs more samples"):
        repsim.bootstrap(x, y, "svcca", n_resamples=20)
    with pytest.raises(ValueError) as info:
        repsim.measure(x[:256], y[:256], "svcca")
    assert "e.g. svcca" not in str(info.value) and "n_components" in str(info.value)  # it was svcca


def test_inference_that_cannot_run_on_one_cell_keeps_the_others():
    a, b = Mlp(0), Mlp(1)
    res = repsim.compare(a, b, _vectors(100, 20), layers=["narrow", "wide"], measures=["svcca"],
                         measure_options={"svcca": {"variance": 1.0}},
                         inference={"bootstrap": 10, "permutations": 10}, progress=False)  # fmt: skip
    t = res.table.set_index(["layer_a", "layer_b"])
    assert t["value"].notna().all()  # 100 samples: every value runs (40 + 40 < 100); 50 (the half-samples) do not
    assert math.isnan(t.loc[("wide", "wide"), "ci_low"])
    reason = t.loc[("wide", "wide"), "inference_error"]
    assert "interval of svcca on (wide, wide): bootstrap of svcca at n = 100" in reason
    assert math.isfinite(t.loc[("narrow", "narrow"), "ci_low"]) and t["p_value"].notna().all()


def test_readme_example_runs_as_shown_at_512():
    pytest.importorskip("torchvision")
    from repsim.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    torch.manual_seed(0)
    model_a, model_b = torchvision.models.resnet18(), torchvision.models.resnet18()
    loader = [torch.randn(128, 3, 32, 32) for _ in range(4)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = repsim.compare(model_a, model_b, loader, layers_a=["layer1", "layer4"],
                             measures=["linear_cka", "svcca", "mutual_knn"],
                             inference={"permutations": 20, "bootstrap": 20}, progress=False)  # fmt: skip
    t = res.table
    assert len(t) == 3 * 2 * 4 and (t["n"] == 512).all() and t["value"].notna().all()
    assert t["p_value"].notna().all()
    kept = t[t["measure"] != "svcca"]
    assert kept["ci_low"].notna().all()
    for reason in t["inference_error"].dropna() if "inference_error" in t else []:
        assert reason.startswith("interval of svcca on (") and "n = 512" in reason
    chance = [w for w in caught if issubclass(w.category, repsim.BiasedCKAChanceWarning)]
    assert len(chance) <= 1


def test_biased_cka_chance_warning_once_per_comparison_whatever_the_route():
    a, b = Conv(0), Conv(1)
    for inference in (None, {"permutations": 3, "bootstrap": 3}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = repsim.compare(a, b, _images(), layers=["c1"], pool="flatten", inference=inference, progress=False)
        assert res.table.set_index("measure").loc["linear_cka", "route"] == "stored"  # the shared Gram pass
        chance = [w for w in caught if issubclass(w.category, repsim.BiasedCKAChanceWarning)]
        assert len(chance) == 1, [str(w.message) for w in chance]
        assert "linear_cka (c1, c1)" in str(chance[0].message) and chance[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", repsim.BiasedCKAChanceWarning)
        repsim.compare(a, b, _images(), layers=["c1"], pool="flatten", measures=["debiased_cka"], progress=False)
        repsim.compare(a, a, _images(), layers=["c1"], pool="flatten", progress=False)  # a model with itself


def test_text_batches_get_the_mask_aware_pool_by_default():
    ids = torch.randint(1, 20, (12, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(12, 7, dtype=torch.long)
    mask[::2, 4:] = 0  # every other sentence padded after 4 tokens
    batches = [{"input_ids": ids[i : i + 6] * mask[i : i + 6], "attention_mask": mask[i : i + 6]} for i in (0, 6)]
    kw = dict(layers=["embed", "mix"], measures=["linear_cka", "debiased_cka"], progress=False)
    default = repsim.compare(Tokens(0), Tokens(1), batches, **kw).table
    masked = repsim.compare(Tokens(0), Tokens(1), batches, pool="mask_mean", **kw).table
    padded = repsim.compare(Tokens(0), Tokens(1), batches, pool="mean", **kw).table
    assert default["value"].tolist() == masked["value"].tolist()
    assert not torch.allclose(torch.tensor(default["value"].tolist()), torch.tensor(padded["value"].tolist()))
    # without a mask the default is the plain mean, bit for bit
    plain = [torch.randn(10, 3, 12, 12, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    by_default = repsim.compare(Conv(0), Conv(1), plain, progress=False).table["value"].tolist()
    assert by_default == repsim.compare(Conv(0), Conv(1), plain, pool="mean", progress=False).table["value"].tolist()


class Refuses(nn.Module):
    """A model that must not run: every check of these tests comes before the first forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)

    def forward(self, x):
        raise AssertionError("the forward pass ran before the arguments were checked")


def test_every_option_is_checked_before_the_pass():
    loader = _vectors()
    with pytest.raises(ValueError, match=r"pool must be one of.*'flaten'"):
        repsim.compare(Refuses(), Refuses(), loader, layers=["fc"], pool="flaten", progress=False)
    with pytest.raises(ValueError, match=r"svcca takes no option\(s\) \['varience'\]"):
        repsim.compare(Refuses(), Refuses(), loader, layers=["fc"], measures=["svcca"],
                       measure_options={"svcca": {"varience": 0.9}}, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="not both"):
        repsim.compare(Refuses(), Refuses(), loader, layers=["fc"], layers_a=["fc"], progress=False)


def test_layers_sets_both_models_and_layers_b_follows_one_rule():
    a, b, loader = Mlp(0), Mlp(1), _vectors()
    both = repsim.compare(a, b, loader, layers=["narrow", "wide"], progress=False)
    each = repsim.compare(a, b, loader, layers_a=["narrow", "wide"], layers_b=["narrow", "wide"], progress=False)
    assert both.table.equals(each.table)
    one = repsim.compare(a, b, loader, layers="wide", measures=["linear_cka"], progress=False)
    assert one.layers_a == one.layers_b == ["wide"]
    # layers_b left out: the same layers for the same model, model_b's defaults for another (lists and
    # "hidden_states" alike, docs/guide/compare.md)
    assert repsim.compare(a, a, loader, layers_a=["wide"], progress=False).layers_b == ["wide"]
    assert repsim.compare(a, b, loader, layers_a=["wide"], progress=False).layers_b == ["narrow", "wide"]


class Blows(nn.Module):
    """NaN in ``wide`` from the second batch on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.narrow = nn.Linear(6, 8)
        self.wide = nn.Linear(8, 40)

    def forward(self, x):
        self.calls += 1
        h = self.narrow(x)
        return self.wide(h * math.nan if self.calls >= 2 else h)


def test_nan_is_refused_at_its_batch_naming_model_and_layer():
    model = Blows()
    with pytest.raises(ValueError, match=r"model_b layer 'wide' \(batch 1\) of the loader"):
        repsim.compare(Mlp(0), model, _vectors(), layers=["wide"], progress=False)
    assert model.calls == 2  # stopped there, the other batches not run


def test_layers_no_wider_than_the_sketch_are_labelled_exact():
    exact = repsim.compare(Conv(0), Conv(1), _images(), layers=["fc"], measures=["linear_cka"], progress=False)
    sketched = repsim.compare(Conv(0), Conv(1), _images(), layers=["fc", "c1"], measures=["linear_cka"],
                              pool="flatten", sketch=64, progress=False).table  # fmt: skip
    sketched = sketched.set_index(["layer_a", "layer_b"])
    assert sketched.loc[("fc", "fc"), "route"] == "moments"
    assert sketched.loc[("fc", "c1"), "route"] == sketched.loc[("c1", "c1"), "route"] == "sketch 64"
    assert sketched.loc[("fc", "fc"), "value"] == pytest.approx(exact.table["value"].item(), abs=1e-12)


def test_options_after_the_data_are_keyword_only_old_use_warns():
    a, b, loader = Mlp(0), Mlp(1), _vectors()
    with pytest.warns(DeprecationWarning, match=r"layers_a=, layers_b=, measures= by name"):
        old = repsim.compare(a, b, loader, ["wide"], ["wide"], ["linear_cka"], progress=False)
    new = repsim.compare(a, b, loader, layers=["wide"], measures=["linear_cka"], progress=False)
    assert old.table.equals(new.table)
    with pytest.raises(TypeError, match="multiple values"):
        repsim.compare(a, b, loader, ["wide"], layers_a=["wide"], progress=False)


def test_each_measure_is_looked_up_once_per_comparison():
    """The pass resolves every measure into a spec once; no layer of the pipeline turns the name back."""
    code, calls = registry.get_measure.__code__, []
    pipeline = str(Path(repsim.__file__).parent / "pipeline")

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is code and frame.f_back.f_code.co_filename.startswith(pipeline):
            calls.append(frame.f_locals["name"])

    measures = ["linear_cka", "debiased_cka", "rsa", "svcca", "minibatch_cka"]
    sys.setprofile(profile)
    try:
        repsim.compare(Mlp(0), Mlp(1), _vectors(), layers=["narrow", "wide"], measures=measures, progress=False)
    finally:
        sys.setprofile(None)
    assert sorted(calls) == sorted(m for m in measures if m != "minibatch_cka")


def test_keyword_only_keeps_old_positional_use_and_old_names_with_a_warning():
    from repsim.core.deprecation import deprecated_arguments

    @deprecated_arguments(positional=("unit", "max_samples"), renamed={"max_units": "max_samples"})
    def f(data, *, unit="sentence", max_samples=None):
        return data, unit, max_samples

    assert f(1, unit="word") == (1, "word", None)
    with pytest.warns(DeprecationWarning, match="pass unit=, max_samples= by name"):
        assert f(1, "word", 5) == (1, "word", 5)
    with pytest.warns(DeprecationWarning, match="max_units= is now max_samples="):
        assert f(1, max_units=7) == (1, "sentence", 7)
    with pytest.raises(TypeError, match="max_samples= only"):
        f(1, max_units=7, max_samples=8)
    with pytest.raises(TypeError, match="takes 1 positional"):
        f(1, "word", 5, 6)
    assert list(inspect.signature(f).parameters) == ["data", "unit", "max_samples"]


class Dead(nn.Module):
    """``dead``: a constant layer (every sample the same), ``live`` an ordinary one; 1152 wide (stored route)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.live = nn.Conv2d(3, 8, 3, padding=1)
        self.dead = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.live(x) + self.dead(torch.zeros_like(x))


def test_a_constant_layer_in_the_shared_gram_pass_costs_only_its_cells():
    res = repsim.compare(Dead(), Conv(1), _images(), layers_a=["live", "dead"], layers_b=["c1"], pool="flatten",
                         progress=False)  # fmt: skip
    t = res.table.set_index(["measure", "layer_a"])
    assert t.loc[("debiased_cka", "live"), "route"] == "stored"
    assert math.isfinite(t.loc[("debiased_cka", "live"), "value"]) and math.isfinite(t.loc[("rsa", "live"), "value"])
    for measure in ("linear_cka", "debiased_cka", "rsa"):
        assert math.isnan(t.loc[(measure, "dead"), "value"])
        assert f"{measure} on (dead, c1) at n = 60" in t.loc[(measure, "dead"), "error"]
