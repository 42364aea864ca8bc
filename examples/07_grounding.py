"""Grounding tests for every registered measure: which measure sees what, on models trained here.

Tests (known right answer, 3 seeds; ``--data fashion-mnist --seeds 2`` on Fashion-MNIST): layer
monotonicity inside one network; label randomisation (0..100 %); a class-coded shortcut present with
probability 0..1 (similarity vs prediction agreement on shortcut-free data); augmentation strength;
and the CL-NSCL vs CL-CE/SupCon separation.

Training and feature extraction are cached under OUT/features/*.safetensors; ``--rescore`` recomputes
every score for every measure registered *now* from the cache, without training.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from _common import base_config, parser, save
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import repsim
from repsim.inference import grounding
from repsim.networks.checkpoints import save_state_dict
from repsim.networks.data import ArrayImages, digits_split, eval_transform, in_channels, read_cifar, read_fashion_mnist
from zoo.data import (
    StampedViews,
    TwoViews,
    add_shortcut,
    digits_augment,
    grayscale_augment,
    randomise_labels,
    simclr_augment,
    stratified_indices,
)
from zoo.losses import cross_entropy
from zoo.models import create_model
from zoo.tracking import CLAIM_MEASURES
from zoo.train import Trainer, make_optimizer, width_option

LAYERS = ("layer1", "layer2", "layer3", "encoder", "projector_hidden", "projector")
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
SHORTCUTS = (0.0, 0.25, 0.5, 0.75, 1.0)
STRENGTHS = (0.0, 0.5, 1.0, 1.5, 2.0)
PAIRED_RESAMPLES = 200  # as the zoo's final intervals
REFERENCE_SPLIT = 0  # one train/reference split for every CE model (see raw_split)

p = parser(__doc__)
p.add_argument("--rescore", action="store_true", help="recompute the scores from the cached features only")
p.add_argument(
    "--measures",
    nargs="+",
    default=None,
    help="measures to score (default: every registered measure of representations; --smoke leaves out the "
    "topology measures, whose persistent homology takes minutes)",
)
args = p.parse_args()
# Fashion-MNIST (--data fashion-mnist, the width-8 ResNet-18): sized to about 1.5 h for 2 seeds on the shared
# 2-core machine (docs/guide/full_scale.md): 26 CE models and 2 objective runs of ~95 steps, then the scoring
FASHION_SIZE = dict(epochs=5, train_samples=5000)
size = dict(FASHION_SIZE) if args.data else {"epochs": 15}
size["epochs"] = args.epochs or size["epochs"]
if args.train_samples:
    size["train_samples"] = args.train_samples
config, out = base_config(args, "07_grounding", objectives=["cl", "nscl", "ce", "supcon"], **size)
cfg = config.resolved()
feature_dir = out / "features"
# the shortcut mark goes into the raw digits (their mild affine augmentation keeps it), onto each augmented
# view elsewhere (random resized crops and flips would remove or mirror a raw-image mark); its own cache tag
STAMP_AFTER_AUGMENTATION = cfg.kind != "digits"
SHORTCUT_TAG = "stamped" if STAMP_AFTER_AUGMENTATION else "shortcut"
seeds = range(args.seeds)


def pick(values):
    return (values[0], values[-1]) if args.smoke else values


# ------------------------------------------------------------------ data
def raw_split(train: bool, seed: int):
    """The training split and the reference samples. Every CE model uses the split of REFERENCE_SPLIT, so
    that all models are compared on the same reference images (a per-seed split would pair features of
    different images across seeds); the seed varies the initialisation, order, augmentation and noise."""
    if cfg.kind == "digits":
        (tx, ty), (vx, vy) = digits_split(REFERENCE_SPLIT)
    elif cfg.kind == "fashion-mnist":  # a stratified training subset (the same for every model), test images
        tx, ty = read_fashion_mnist(cfg.data.partition(":")[2] or None, True)
        vx, vy = read_fashion_mnist(cfg.data.partition(":")[2] or None, False)
        if cfg.train_samples:
            keep = stratified_indices(ty, cfg.train_samples, REFERENCE_SPLIT)
            tx, ty = tx[keep], ty[keep]
    else:  # CIFAR: the first 10 classes, so the 10 shortcut slots of the border fit
        tx, ty = read_cifar(cfg.data.partition(":")[2], cfg.kind, True)
        vx, vy = read_cifar(cfg.data.partition(":")[2], cfg.kind, False)
        keep, keep_v = ty < 10, vy < 10
        tx, ty, vx, vy = tx[keep], ty[keep], vx[keep_v], vy[keep_v]
    return (tx, ty) if train else (vx[: cfg.reference_samples], vy[: cfg.reference_samples])


def train_augment(strength: float):
    if cfg.kind == "digits":
        return digits_augment(strength=strength)
    if cfg.kind == "fashion-mnist":
        return grayscale_augment(cfg.image_size, cfg.kind, strength)
    return simclr_augment(cfg.image_size, cfg.kind) if strength else eval_transform(cfg.kind, cfg.image_size)


# ------------------------------------------------------------------ models and features
def layer_features(model, images: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
    """Every layer of LAYERS (conv stages average-pooled to 2x2) and the logits on un-augmented ``images``."""
    device = next(model.parameters()).device
    loader = DataLoader(ArrayImages(images, labels, eval_transform(cfg.kind, cfg.image_size)), batch_size=512)
    store: dict[str, list] = {}
    pool = torch.nn.AdaptiveAvgPool2d(2)
    hooks = [
        getattr(model.encoder, name).register_forward_hook(
            lambda _m, _i, o, name=name: store.setdefault(name, []).append(pool(o).flatten(1).cpu())
        )
        for name in ("layer1", "layer2", "layer3")
    ]
    hooks.append(
        model.projector[2].register_forward_hook(
            lambda _m, _i, o: store.setdefault("projector_hidden", []).append(o.cpu())
        )
    )
    model.eval()
    with torch.no_grad():
        for x, _ in loader:
            o = model(x.to(device))
            for key, name in (("features", "encoder"), ("projection", "projector"), ("logits", "logits")):
                store.setdefault(name, []).append(o[key].cpu())
    for h in hooks:
        h.remove()
    return {k: torch.cat(v).double().contiguous() for k, v in store.items()}


def train_ce(tag: str, seed: int, fraction=0.0, shortcut=0.0, strength=1.0) -> Path:
    """A supervised (CE) digits model trained with the given perturbation; features cached."""
    path = feature_dir / f"{tag}_seed{seed}.safetensors"
    if path.exists() and "reference_labels" in load(path):  # caches without it predate the common split
        return path
    tx, ty = raw_split(True, seed)
    n_classes = int(ty.max()) + 1
    ty = randomise_labels(ty, fraction, n_classes, seed)
    if STAMP_AFTER_AUGMENTATION:  # crops and flips would cut a raw-image mark away or mirror it
        data = StampedViews(ArrayImages(tx, ty), train_augment(strength), ty, shortcut, cfg.kind, seed)
    else:
        data = TwoViews(ArrayImages(add_shortcut(tx, ty, shortcut, seed), ty), train_augment(strength))
    torch.manual_seed(seed)
    channels = in_channels(cfg.kind)
    model = create_model(
        backbone=cfg.backbone,
        num_classes=n_classes,
        in_channels=channels,
        proj_hidden=cfg.proj_hidden,
        proj_out=cfg.proj_out,
        **width_option(cfg),
    )
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g)
    opt, sched = make_optimizer(model, cfg, len(loader))
    step = 0
    for _ in range(cfg.epochs):
        model.train()
        for v1, v2, y in loader:
            logits = model(torch.cat([v1, v2]).to(device))["logits"]
            loss = cross_entropy(logits[: len(y)], logits[len(y) :], y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
    vx, vy = raw_split(False, seed)
    save_state_dict(model.state_dict(), out / "models" / f"{tag}_seed{seed}.safetensors")
    save_state_dict({**layer_features(model, vx, vy), "reference_labels": torch.as_tensor(vy)}, path)
    return path


def train_objectives(seed: int) -> Path:
    path = feature_dir / f"objectives_seed{seed}.safetensors"
    if path.exists():
        return path
    # the objectives are only compared within one run (seed), on that run's own reference split
    run_cfg = dataclasses.replace(
        config, seed=seed, eval_every=10_000, out=str(out / "runs" / f"objectives_seed{seed}")
    )
    trainer = Trainer(run_cfg)
    trainer.run()
    vx, vy = raw_split(False, seed)
    feats = {}
    for run, model in trainer.models.items():
        feats.update({f"{run}/{k}": v for k, v in layer_features(model, vx, vy).items()})
    save_state_dict(feats, path)
    return path


def load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------ training (cached)
jobs = [("clean", s, {}) for s in seeds]
jobs += [(f"labels{f}", s, {"fraction": f}) for f in pick(FRACTIONS)[1:] for s in seeds]
jobs += [(f"{SHORTCUT_TAG}{q}", s, {"shortcut": q}) for q in pick(SHORTCUTS)[1:] for s in seeds]
jobs += [(f"augment{a}", s, {"strength": a}) for a in pick(STRENGTHS) if a != 1.0 for s in seeds]
if not args.rescore:
    start = time.perf_counter()
    for tag, seed, kw in tqdm(jobs, desc="CE models"):
        train_ce(tag, seed, **kw)
    for seed in tqdm(seeds, desc="objective runs"):
        train_objectives(seed)
    print(f"training and features: {time.perf_counter() - start:.0f} s")


_reference: dict[str, torch.Tensor] = {}


def features(tag: str, seed: int) -> dict[str, torch.Tensor]:
    path = feature_dir / f"{tag}_seed{seed}.safetensors"
    if not path.exists():
        raise SystemExit(f"no cached features at {path}: run without --rescore first")
    feats = load(path)
    if tag != "objectives":  # models compared across seeds must have seen the same reference images
        labels = feats.pop("reference_labels", None)
        first = _reference.setdefault("labels", labels) if labels is not None else None
        if labels is None or not torch.equal(labels, first):
            raise SystemExit(f"{path} was computed on other reference samples: run without --rescore to refresh it")
    return feats


# ------------------------------------------------------------------ scoring
measures = repsim.list_measures()
usable = measures[~measures["needs_labels"] & ~measures["needs_outputs"]]
if args.measures:
    usable = usable[usable["name"].isin(args.measures)]
elif args.smoke:
    usable = usable[usable["family"] != "topology"]
rows, failures, paired = [], [], []


def grid(name: str, xs: list, ys: list | None = None) -> np.ndarray:
    """measure_grid over whole model groups: each model's per-layer work is done once, not per pair."""
    try:
        return repsim.measure_grid(xs, ys, name).numpy()
    except ValueError as err:
        failures.append({"measure": name, "reason": str(err).splitlines()[0][:200]})
        return np.full((len(xs), len(xs if ys is None else ys)), math.nan)


def group_pairs(tags_values: list[tuple[str, float]], name: str):
    """Similarity and gap of every pair of (tag, seed) models on the encoder (cross-seed pairs only)."""
    models = [(v, s, features(t, s)["encoder"]) for t, v in tags_values for s in seeds]
    sim = grid(name, [m[2] for m in models])
    sims, gaps = [], []
    for a, b in itertools.combinations(range(len(models)), 2):
        (va, sa, _), (vb, sb, _) = models[a], models[b]
        if sa != sb or len(seeds) == 1:
            sims.append(sim[a, b])  # x = the earlier model, as a pair-by-pair loop would pass it
            gaps.append(abs(va - vb))
    return np.asarray(sims), np.asarray(gaps)


def finite(*arrays):
    keep = np.all([np.isfinite(a) for a in arrays], axis=0)
    return [a[keep] for a in arrays]


label_groups = [("clean", 0.0)] + [(f"labels{f}", f) for f in pick(FRACTIONS)[1:]]
aug_groups = [("clean", 1.0)] + [(f"augment{a}", a) for a in pick(STRENGTHS) if a != 1.0]
for info in tqdm(list(usable.itertuples()), desc="measures"):
    name, up = info.name, bool(info.larger_is_more_similar)
    base = {"measure": name, "family": info.family}
    # 1. layer monotonicity: every CE and CL model's layer chain
    mono = []
    for seed in seeds:
        chains = [[features("clean", seed)[k] for k in LAYERS]]
        obj = features("objectives", seed)
        chains.append([obj[f"cl/{k}"] for k in LAYERS])
        for chain in chains:
            s = grid(name, chain)
            if np.isfinite(s).all():
                mono.append(grounding.layer_monotonicity(s, up)["conformity"])
    rows.append(
        {
            **base,
            "test": "layer monotonicity",
            "score": 2 * np.mean(mono) - 1 if mono else math.nan,  # 2 conformity - 1: chance 0, perfect 1
            "conformity": np.mean(mono) if mono else math.nan,
            "sd": 2 * np.std(mono, ddof=1) if len(mono) > 1 else math.nan,
        }
    )
    # 2 and 4: group ordering (Spearman with -gap; AUPRC in the CSV)
    for test, groups in (("label randomisation", label_groups), ("augmentation", aug_groups)):
        sims, gaps = finite(*group_pairs(groups, name))
        if len(sims) >= 3:
            g = grounding.group_ordering(sims, gaps, up)
            rows.append({**base, "test": test, "score": g["spearman"], "auprc": g["auprc"], "chance": g["chance"]})
        else:
            rows.append({**base, "test": test, "score": math.nan})
    # 3. shortcut affinity: every shortcut model against every clean model of another seed
    sims, agree = [], []
    shortcut_models = [(q, sa, features(f"{SHORTCUT_TAG}{q}", sa)) for q in pick(SHORTCUTS)[1:] for sa in seeds]
    clean_models = [(sb, features("clean", sb)) for sb in seeds]
    sim = grid(name, [m[2]["encoder"] for m in shortcut_models], [m[1]["encoder"] for m in clean_models])
    for (i, (_, sa, a)), (j, (sb, b)) in itertools.product(enumerate(shortcut_models), enumerate(clean_models)):
        if sa == sb and len(seeds) > 1:
            continue
        sims.append(sim[i, j])
        agree.append(float(grounding.prediction_agreement(a["logits"], b["logits"])))
    sims, agree = finite(np.asarray(sims), np.asarray(agree))
    rows.append(
        {
            **base,
            "test": "shortcut affinity",
            "score": grounding.shortcut_affinity(sims, agree, up) if len(sims) >= 3 else math.nan,
        }
    )
    # 5. objective separation: CL-NSCL above CL-CE and CL-SupCon, per seed, encoder
    for layer in ("encoder", "projector"):
        close, far, above = [], [], []
        for seed in seeds:
            obj = features("objectives", seed)
            row = grid(name, [obj[f"cl/{layer}"]], [obj[f"{o}/{layer}"] for o in ("nscl", "ce", "supcon")])[0]
            close.append(row[0])
            far += list(row[1:])
            if name in CLAIM_MEASURES:  # the paired interval of each seed's claim, on its reference set
                for rival in ("ce", "supcon"):
                    res = repsim.compare_paired(
                        obj[f"cl/{layer}"], obj[f"nscl/{layer}"], obj[f"{rival}/{layer}"], name,
                        n_resamples=PAIRED_RESAMPLES, seed=seed,
                    )  # fmt: skip
                    above.append(res.ci_low > 0 if up else res.ci_high < 0)
                    paired.append(
                        {"measure": name, "layer": layer, "seed": seed, "rival": rival, "difference": res.difference,
                         "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value}
                    )  # fmt: skip
        (close,), (far,) = finite(np.asarray(close)), finite(np.asarray(far))
        if len(close) and len(far):
            sep = grounding.separation(close, far, up)
            rows.append(
                {
                    **base,
                    "test": f"objectives ({layer})",
                    "score": 2 * sep["superiority"] - 1,  # chance 0, perfect 1
                    "superiority": sep["superiority"],
                    "cohens_d": sep["cohens_d"],
                    "paired_excludes_0": np.mean(above) if above else math.nan,
                }
            )

table = pd.DataFrame(rows)
heat = table.pivot_table(index="measure", columns="test", values="score", aggfunc="first")
heat = heat.loc[heat.mean(axis=1).sort_values(ascending=False).index]
fig, ax = plt.subplots(figsize=(1.6 * heat.shape[1] + 3, 0.35 * heat.shape[0] + 2))
im = ax.imshow(heat.to_numpy(dtype=float), cmap="RdYlGn", vmin=-1, vmax=1, aspect="auto")
ax.set_xticks(range(heat.shape[1]), heat.columns, rotation=30, ha="right")
ax.set_yticks(range(heat.shape[0]), heat.index)
for (i, j), v in np.ndenumerate(heat.to_numpy(dtype=float)):
    ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
fig.colorbar(im, ax=ax, label="score (1 = follows the known answer, 0 = chance)")
ax.set_title(f"grounding scores ({len(seeds)} seeds, {cfg.kind})")
print(heat.round(3).to_string())
if failures:
    fail = pd.DataFrame(failures).drop_duplicates()
    print(f"{len(fail)} measure/reason pairs gave NaN (see grounding_failures.csv)")
    from repsim.core.io import atomic_write_text

    print("wrote:\n  " + str(atomic_write_text(out / "grounding_failures.csv", fail.to_csv(index=False))))
if paired:
    from repsim.core.io import atomic_write_text

    print("wrote:\n  " + str(atomic_write_text(out / "objective_paired.csv", pd.DataFrame(paired).to_csv(index=False))))
save(table, fig, out, "grounding")
plt.close("all")
