"""The main study at ResNet scale on a real benchmark: CL, NSCL, SupCon, CE and the balanced loss on Fashion-MNIST.

Five objectives trained in lockstep under shared randomness (:class:`zoo.train.Trainer`: one initial model,
one seeded batch and augmentation stream, the same two views for every model), a CIFAR-stem ResNet-18 on the
28x28 images as they are (no padding to 32: the CIFAR stem keeps 28 -> 28 -> 14 -> 7 -> 4, and 28 px costs
23 % fewer multiply-adds than 32), SimCLR's crop and flip for grayscale (RandomResizedCrop scale 0.2-1 as in
SupCon's CIFAR recipe; no colour jitter or grayscale step), several seeds. It reports, with paired intervals:

* encoder and projector linear CKA / RSA of NSCL, SupCon, CE and balanced against CL over training;
* the relative weight distance to CL against CKA;
* the bound of arXiv 2510.08852 on |Sigma_CL - Sigma_NSCL|_F against the measured gap;
* linear-probe and kNN accuracy against the published Fashion-MNIST baselines of the dataset's README
  (the ``dataset-fashion-mnist`` package; its ``benchmark/baselines.json`` holds the scikit-learn benchmark's
  parameter grids only) and against the same probes on raw pixels.

Sizing (the defaults), measured on the shared 2-core machine with other jobs running (load 4-6), OpenMP threads 1
(docs/guide/full_scale.md has the table): one step of all five objectives on a batch of 256 (two views) takes
4.9 s at width 8 and 10.3 s at width 16, so an epoch of 20 000 images takes 384 s / 801 s (60 000: 1151 s /
2403 s); one evaluation (2000 reference images, a 10 000-image kNN bank) 52 s / 77 s; a final linear probe
29 s / 54 s per model. About an hour per seed for 3 seeds in about 3 hours: width 8 (a ResNet-18 with stages
8-16-32-64, 0.18 M encoder parameters, 64-d encoder output) on a 20 000-image class-stratified training subset,
8 epochs (625 steps per model), evaluation every epoch: ~62 min per seed. Width 16 would allow 4 epochs,
width 32 about one: too few steps for a contrastive model, so the budget goes into steps, not width.
A GPU runs the same script at full width: ``--width 64 --train-samples 60000 --epochs 200``.

python examples/10_fashion_resnet.py --out /work/runs/fashion10      # the sized run (~3 h, resumable)
python examples/10_fashion_resnet.py --smoke --seeds 1 --epochs 1 --out /tmp/f10   # seconds, for the tests
python examples/10_fashion_resnet.py --out OUT --report-only         # the report from the finished seeds
python examples/10_fashion_resnet.py --out OUT --train-seeds 2       # one seed per process (a core, a GPU)

Every seed runs in OUT/runs/seed{S} with a checkpoint every epoch: rerunning the same command after a kill
resumes from the last checkpoint (bit-identically on the CPU) and skips finished seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch

import repsim  # noqa: F401  (the torchvision guard, before zoo touches torchvision)
from zoo.config import TrainConfig
from zoo.train import Trainer

OBJECTIVES = ["cl", "nscl", "supcon", "ce", "balanced"]
RIVALS = ["nscl", "supcon", "ce", "balanced"]
SHOWN = ("ResNet18", "MLP 256-128-100", "HOG+SVM", "Human Performance")  # published baselines quoted in the summary
README = Path("/usr/share/doc/dataset-fashion-mnist/README.md.gz")
# the sized CPU run (module docstring); a GPU raises width, train_samples and epochs
DEFAULTS = dict(width=8, train_samples=20_000, epochs=8, seeds=3, eval_every=1, batch_size=256)
# smoke: seconds; one L2 strength for the linear probes (the default grid's 46 L-BFGS fits per probe dominate)
SMOKE = dict(width=4, train_samples=400, epochs=1, batch_size=100, reference_samples=200, inference_resamples=20,
             probe_l2_grid=[1e-3])  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (the Debian package) or fashion-mnist:ROOT")
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"], help="seeds 0 .. SEEDS-1 (default 3)")
    p.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        default=None,
        help="train only these of the seeds (e.g. one process per core or per GPU: --train-seeds 2); "
        "the report covers every finished seed of --seeds",
    )
    p.add_argument("--epochs", type=int, default=None, help=f"default {DEFAULTS['epochs']}")
    p.add_argument("--width", type=int, default=None, help=f"ResNet-18 base width (default {DEFAULTS['width']})")
    p.add_argument("--train-samples", type=int, default=None, help=f"default {DEFAULTS['train_samples']}")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {DEFAULTS['batch_size']}")
    p.add_argument("--eval-every", type=int, default=None, help="epochs between evaluations (default 1)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default="results/examples/10_fashion_resnet")
    p.add_argument("--figures", default=None, help="folder for the figures, CSVs and summary (default: --out)")
    p.add_argument("--smoke", action="store_true", help="a 600-image subset, width 4, one epoch (for the tests)")
    p.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="train at most this many epochs in this invocation (all seeds together), then stop; rerun to continue",
    )
    p.add_argument("--report-only", action="store_true", help="no training: the report from the finished seeds")
    return p.parse_args(argv)


def study_config(args) -> TrainConfig:
    size = dict(DEFAULTS, **(SMOKE if args.smoke else {}))
    for key in ("epochs", "width", "train_samples", "batch_size", "eval_every"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    return TrainConfig(
        data=args.data,
        objectives=OBJECTIVES,
        control=False,
        backbone="resnet18",
        width=size["width"],
        proj_hidden=512,  # 8 x the width-8 encoder's 64 features; 2048 would cost more than the encoder's last stage
        proj_out=128,
        image_size=28,
        train_samples=size["train_samples"],
        reference_samples=size.get("reference_samples", 2000),
        epochs=size["epochs"],
        batch_size=size["batch_size"],
        lr=0.3,
        warmup_epochs=1,
        weight_decay=1e-4,
        tau=0.5,
        eval_every=size["eval_every"],
        checkpoint_every=1,
        inference_resamples=size.get("inference_resamples", 200),
        probe_l2_grid=size.get("probe_l2_grid"),
        final_probes=True,
        progress=True,
        device=args.device,
        amp=gpu,
        channels_last=gpu,
        num_workers=8 if gpu else 0,
        out=str(Path(args.out) / "runs" / "seed0"),
    )


def seed_is_done(cfg: TrainConfig) -> bool:
    """Whether this seed's run folder holds the finished run of this very configuration (its final files)."""
    folder = Path(cfg.out)
    if not (folder / "final_probes.csv").exists() or not (folder / "config.json").exists():
        return False
    saved, now = json.loads((folder / "config.json").read_text()), dataclasses.asdict(cfg.resolved())
    ignore = {"progress", "device", "num_workers", "out"}
    return all(saved.get(k) == v for k, v in now.items() if k not in ignore)


def run_seed(config: TrainConfig, out: Path, seed: int, budget: int | None) -> tuple[bool, int]:
    """Train (or resume) one seed, at most ``budget`` epochs in this call; a finished seed is skipped.
    Returns (finished, epochs trained in this call)."""
    cfg = dataclasses.replace(config, seed=seed, out=str(out / "runs" / f"seed{seed}"))
    if seed_is_done(cfg):
        print(f"seed {seed}: already finished ({cfg.out}), skipped", flush=True)
        return True, 0
    trainer = Trainer(cfg)
    start = time.perf_counter()
    trainer.run(resume=True, max_epochs=budget)
    seconds = time.perf_counter() - start
    state = "finished" if trainer.finished else "stopped"
    print(
        f"seed {seed}: {state} at epoch {trainer.epoch}/{cfg.epochs}, trained {trainer.epochs_trained} epoch(s) "
        f"in this call ({seconds:.0f} s)",
        flush=True,
    )
    return trainer.finished, trainer.epochs_trained


def finished_logs(out: Path, seeds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tidy logs and final probes of every finished seed (those with final_probes.csv), tagged with the seed."""
    logs, probes_ = [], []
    for seed in range(seeds):
        folder = out / "runs" / f"seed{seed}"
        if not (folder / "final_probes.csv").exists():
            continue
        logs.append(pd.read_csv(folder / "alignment.csv").assign(seed=seed))
        probes_.append(pd.read_csv(folder / "final_probes.csv").assign(seed=seed))
    if not logs:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(logs, ignore_index=True), pd.concat(probes_, ignore_index=True)


def published_baselines(readme: Path = README) -> pd.DataFrame:
    """The benchmark table of the dataset's README: classifier, preprocessing, Fashion test accuracy."""
    if not readme.exists():
        return pd.DataFrame(columns=["classifier", "preprocessing", "accuracy"])
    with gzip.open(readme, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Classifier"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append({"classifier": cells[0], "preprocessing": cells[1], "accuracy": pd.to_numeric(cells[2], "coerce")})
    return pd.DataFrame(rows).dropna(subset=["accuracy"])


def pixel_probes(config: TrainConfig) -> pd.DataFrame:
    """The same linear probe and kNN on raw (normalised) pixels, same bank and queries as the encoders'."""
    import probes

    trainer = Trainer(dataclasses.replace(config, objectives=["cl"], out=str(Path(config.out).parent / "_pixels")))
    loaders = (trainer.bank_loader, trainer.ref_loader)
    flat = [torch.cat([x.flatten(1) for x, _ in loader]).double() for loader in loaders]
    labels = [torch.cat([y for _, y in loader]) for loader in loaders]
    grid = {} if config.probe_l2_grid is None else {"l2_grid": config.probe_l2_grid}
    table = probes.evaluate_features(flat[0], labels[0], flat[1], labels[1], shots=(1, 5), episodes=50, seed=0, **grid)
    return table.assign(objective="raw pixels")


def paired_over_seeds(paired: pd.DataFrame) -> pd.DataFrame:
    """Across seeds: the mean NSCL - rival difference and its t interval (seed-to-seed), beside the per-seed
    paired intervals (half-sample resamples of the reference set) of :func:`repsim.compare_paired`."""
    from scipy import stats

    rows = []
    for (objective, layer, measure), g in paired.groupby(["objective", "layer", "measure"]):
        n, mean, sd = len(g), g["value"].mean(), g["value"].std(ddof=1)
        half = stats.t.ppf(0.975, n - 1) * sd / n**0.5 if n > 1 else float("nan")
        rows.append({"objective": objective, "layer": layer, "measure": measure.removeprefix("paired_"),
                     "seeds": n, "mean": mean, "t_low": mean - half, "t_high": mean + half,
                     "seeds_with_ci_above_0": int((g["ci_low"] > 0).sum())})  # fmt: skip
    return pd.DataFrame(rows)


def report(log: pd.DataFrame, final_probes: pd.DataFrame, config: TrainConfig, figures: Path, args) -> None:
    from repsim.core.io import atomic_save_figure, atomic_write_text

    figures.mkdir(parents=True, exist_ok=True)
    written = []

    def save(table: pd.DataFrame, fig, name: str) -> None:
        written.append(atomic_write_text(figures / f"{name}.csv", table.to_csv(index=False)))
        if fig is not None:
            written.append(atomic_save_figure(fig, figures / f"{name}.png", dpi=110, bbox_inches="tight"))
            plt.close(fig)

    seeds = sorted(log["seed"].unique())
    align = log[log["measure"].isin(["linear_cka", "rsa"]) & log["objective"].isin(RIVALS)]
    grid = sns.relplot(data=align, x="epoch", y="value", hue="objective", hue_order=RIVALS, col="measure",
                       row="layer", kind="line", marker="o", errorbar="sd", height=2.8, aspect=1.3)  # fmt: skip
    grid.figure.suptitle(f"alignment with CL, Fashion-MNIST, ResNet-18 width {config.width} "
                         f"({len(seeds)} seeds, mean and seed sd)", y=1.02)  # fmt: skip
    save(align, grid.figure, "fashion_alignment")

    weights = log[(log["layer"] == "encoder") & log["measure"].isin(["linear_cka", "weight_distance"])
                  & log["objective"].isin(RIVALS)]  # fmt: skip
    wide = weights.pivot_table(index=["seed", "epoch", "objective"], columns="measure", values="value").reset_index()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    sns.scatterplot(data=wide, x="weight_distance", y="linear_cka", hue="objective", hue_order=RIVALS,
                    size="epoch", ax=ax)  # fmt: skip
    ax.set(title="encoder CKA with CL against relative weight distance to CL")
    save(wide, fig, "fashion_weights_vs_cka")

    theory = log[(log["objective"] == "nscl") & (log["layer"] == "projector")
                 & log["measure"].isin(["frobenius_gap", "frobenius_gap_bound"])]  # fmt: skip
    fig, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
    sns.lineplot(data=theory, x="epoch", y="value", hue="measure", marker="o", errorbar="sd", ax=ax)
    ax.set(yscale="log", ylabel="|Sigma_CL - Sigma_NSCL|_F (projector)", title="measured gap vs the bound")
    save(theory, fig, "fashion_theory")

    paired = log[log["measure"].astype(str).str.startswith("paired_")]
    over_seeds = paired_over_seeds(paired)
    save(paired, None, "fashion_paired")
    save(over_seeds, None, "fashion_paired_over_seeds")

    pixels = pixel_probes(config)
    baselines = published_baselines()
    top1 = pd.concat([final_probes, pixels.assign(seed=0)], ignore_index=True)
    top1 = top1[top1["probe"].isin(["linear", "knn"]) & (top1["metric"] == "top1")]
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    sns.barplot(data=top1, x="objective", y="value", hue="probe", errorbar="sd", ax=ax)
    for name, style in (("ResNet18", "-"), ("MLP 256-128-100", "--"), ("Human Performance", ":")):
        hit = baselines[baselines["classifier"].str.strip() == name]
        if len(hit):
            ax.axhline(hit["accuracy"].iloc[0], color="k", ls=style, lw=1, label=f"published: {name}")
    ax.set(ylim=(0.5, 1.0), ylabel="test top-1", title="frozen-encoder probes vs published supervised baselines")
    ax.legend(fontsize=7, loc="lower right")
    save(top1, fig, "fashion_probes")
    save(baselines, None, "fashion_published_baselines")

    last = log[log["epoch"] == log["epoch"].max()]
    final = last[last["measure"].isin(["linear_cka", "rsa", "weight_distance", "frobenius_gap",
                                       "frobenius_gap_bound", "cka_bound_theory"])]  # fmt: skip
    final_table = final.groupby(["layer", "measure", "objective"])["value"].agg(["mean", "std"]).reset_index()
    save(final_table, None, "fashion_final")
    probe_table = top1.groupby(["objective", "probe"])["value"].agg(["mean", "std"]).reset_index()
    md = [
        "# Fashion-MNIST, CIFAR-stem ResNet-18: NSCL, SupCon, CE and balanced against CL",
        "",
        f"{len(seeds)} finished seed(s) of {args.seeds}; width {config.width}; {config.epochs} epochs on "
        f"{config.train_samples or 60000} training images; batch {config.batch_size}; SGD lr {config.scaled_lr():g}; "
        f"tau {config.tau}; reference set: the first {config.reference_samples} test images.",
        "",
        "## At the last epoch (mean and seed sd)",
        "",
        "```",
        final_table.round(4).to_string(index=False),
        "```",
        "",
        "## NSCL - rival alignment differences (paired)",
        "",
        "Mean over seeds with a t interval; `seeds_with_ci_above_0` counts the seeds whose paired 95 % interval "
        f"({config.inference_resamples} half-sample resamples of the reference set) lies above 0.",
        "",
        "```",
        over_seeds.round(4).to_string(index=False),
        "```",
        "",
        "## Probes (test top-1; bank: the training subset, at most 10 000 images)",
        "",
        "```",
        probe_table.round(4).to_string(index=False),
        "```",
        "",
        "Published (the dataset README's benchmark table): "
        + ", ".join(f"{r.classifier} {r.accuracy:.3f}" for r in baselines.itertuples() if r.classifier in SHOWN),
        "",
    ]
    written.insert(0, atomic_write_text(figures / "fashion_summary.md", "\n".join(md)))
    print("wrote:\n" + "\n".join(f"  {p}" for p in written))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:  # tiny tensors: on a shared machine a second OpenMP thread only waits for a core
        torch.set_num_threads(1)
    config = study_config(args)
    out = Path(args.out)
    cfg = config.resolved()
    print(f"Fashion-MNIST study: {args.seeds} seed(s), ResNet-18 width {cfg.width}, {cfg.epochs} epochs, "
          f"{cfg.train_samples or 'all'} training images, torch threads {torch.get_num_threads()}, out {out}",
          flush=True)  # fmt: skip
    budget = args.stop_after_epochs
    train_seeds = range(args.seeds) if args.train_seeds is None else args.train_seeds
    if not set(train_seeds) <= set(range(args.seeds)):
        raise SystemExit(f"--train-seeds {args.train_seeds}: every seed must be in 0..{args.seeds - 1} (--seeds)")
    if not args.report_only:
        for seed in train_seeds:
            if budget is not None and budget <= 0:
                break
            finished, trained = run_seed(config, out, seed, budget)
            if budget is not None:
                budget -= trained
            if not finished:
                break
    log, final_probes = finished_logs(out, args.seeds)
    done = log["seed"].nunique() if len(log) else 0
    if done < args.seeds:
        print(f"{done} of {args.seeds} seed(s) finished; rerun the same command to continue (it resumes).")
    if done:
        report(log, final_probes, config, Path(args.figures or out), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
