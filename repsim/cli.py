"""The ``repsim`` command: ``layers``, ``compare``, ``many`` and ``brain``. Errors end in one clear line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .core.distributed import close, init_from_env, is_distributed, rank_and_world
from .core.io import atomic_save_figure, atomic_write_text
from .inference.grid import GRID_AGGREGATE_LAYER
from .measures.registry import registered_names
from .networks.checkpoints import build_arch, load_model
from .networks.data import DatasetNotFoundError, reference_loader
from .networks.hooks import default_layers
from .pipeline.compare import available_measures, compare
from .pipeline.many import compare_many


def input_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


class ChannelAdapter:
    """Repeats single-channel images (digits) to the channel count a model's first conv expects."""

    def __init__(self, loader: Iterable, channels: int | None) -> None:
        self.loader, self.channels = loader, channels
        self.batch_size = getattr(loader, "batch_size", None)
        self.dataset = getattr(loader, "dataset", None)
        self.sampler = getattr(loader, "sampler", None)  # a DistributedSampler under torchrun

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            if self.channels and x.ndim == 4 and x.shape[1] == 1 and self.channels > 1:
                x = x.expand(-1, self.channels, -1, -1)
            yield x, y


def _loader(args, model: nn.Module):
    loader = reference_loader(
        args.data, train=args.split == "train", batch_size=args.batch_size, image_size=args.image_size
    )
    if is_distributed():  # under torchrun: each rank reads its shard, in the dataset's order
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        dataset = loader.dataset
        if getattr(args, "max_samples", None) is not None:  # the cap is taken before sharding
            dataset = Subset(dataset, range(min(args.max_samples, len(dataset))))
        sampler = DistributedSampler(dataset, shuffle=False)
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=0)
    return ChannelAdapter(loader, input_channels(model))


def _layers(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def cmd_layers(args) -> None:
    model = build_arch(args.arch, args.num_classes)
    defaults = set(default_layers(model))
    for name, module in model.named_modules():
        if name and (args.all or not list(module.children()) or name in defaults or name.count(".") < 1):
            mark = "  (default)" if name in defaults else ""
            print(f"{name:40s} {type(module).__name__}{mark}")


def cmd_compare(args) -> None:
    model_a = load_model(args.a, args.arch, num_classes=args.num_classes)
    model_b = load_model(args.b, args.arch_b or args.arch, num_classes=args.num_classes)
    result = compare(
        model_a,
        model_b,
        _loader(args, model_a),
        layers_a=_layers(args.layers),
        layers_b=_layers(args.layers_b) or _layers(args.layers),
        measures=args.measures,
        device=args.device,
        max_samples=None if is_distributed() else args.max_samples,
        pool=args.pool,
        sample_cap=args.sample_cap,
        inference=(
            {"permutations": args.permutations, "bootstrap": args.bootstrap, "adjust": args.adjust}
            | ({"calibrate": args.calibrate} if args.calibrate else {})
            if args.permutations or args.bootstrap or args.calibrate
            else None
        ),
        result_on="rank0",
        progress=rank_and_world()[0] == 0,
        memory=args.memory,
        sketch=args.sketch,
        dry_run=args.dry_run,
        knn=args.knn,
    )
    if args.dry_run:
        if rank_and_world()[0] == 0:
            print(result)
        return
    if result is None:  # under torchrun, rank 0 writes the results
        return
    out = Path(args.out)
    written = [result.to_csv(out / "comparison.csv")]
    import matplotlib.pyplot as plt

    for measure in result.measures:
        print(f"\n{measure}:\n{result.matrix(measure).round(4).to_string()}")
        if "p_adjusted" in result.table:
            sub = result.table[result.table["measure"] == measure]
            adjusted = sub.pivot(index="layer_a", columns="layer_b", values="p_adjusted")
            print(f"adjusted p-values ({args.adjust}):\n{adjusted.round(4).to_string()}")
        if "calibrated" in result.table:
            mine = result.table[result.table["measure"] == measure]
            best = mine["layer_a"] == GRID_AGGREGATE_LAYER
            if best.any():  # measures of model outputs are not calibrated
                calibrated = mine[~best].pivot(index="layer_a", columns="layer_b", values="calibrated")
                top = mine[best].iloc[0]
                print(f"calibrated (0 = not above chance):\n{calibrated.round(4).to_string()}")
                print(f"grid maximum {top['value']:.4f}, calibrated {top['calibrated']:.4f}")
        ax = result.heatmap(measure)
        written.append(atomic_save_figure(ax.figure, out / f"heatmap_{measure}.png", dpi=120))
        plt.close(ax.figure)
    print("\nwrote:\n" + "\n".join(f"  {p}" for p in written))


def cmd_many(args) -> None:
    if args.layer is not None:  # the 0.3 form: checkpoints at one layer
        _many_one_layer(args)
        return
    sources = [*args.checkpoints, *_feature_sources(args.features or [])]
    if len(sources) < 2:
        raise ValueError("repsim many needs at least two sources: checkpoints and/or --features files or folders")
    loader = None
    if args.checkpoints:
        if not args.arch:
            raise ValueError("checkpoints need --arch (or pass stored features with --features)")
        loader = _loader(args, load_model(args.checkpoints[0], args.arch, num_classes=args.num_classes))
    layers = "all" if args.layers in (None, "all") else _layers(args.layers)
    result = compare_many(
        sources,
        loader,
        layers=layers,
        measures=args.measures,
        arch=args.arch,
        pool=args.pool,
        device=args.device,
        max_samples=None if is_distributed() else args.max_samples,
        cache_dir=args.cache,
        join=args.join,
        inference={"calibrate": args.calibrate, "aggregate": args.aggregate} if args.calibrate else None,
        block_models=args.block_models,
        memory=args.memory,
        sketch=args.sketch,
        progress=rank_and_world()[0] == 0,
    )
    if rank_and_world()[0] != 0:
        return
    written = result.save(Path(args.out), args.aggregate)
    for measure in result.measures:
        matrix = result.matrix(measure, args.aggregate).round(4).to_string()
        print(f"\n{measure} ({args.aggregate} over layer pairs):\n{matrix}")
        if args.calibrate:
            calibrated = result.matrix(measure, args.aggregate, calibrated=True)
            print(f"calibrated (0 = not above chance):\n{calibrated.round(4).to_string()}")
    print("\nwrote:\n" + "\n".join(f"  {p}" for p in written))


def _feature_sources(paths: list[str]) -> list[Path]:
    """Feature files or folders; a folder that is not itself a feature folder gives its entries."""
    from .core.feature_files import SUFFIXES
    from .core.featureset import is_featureset

    out: list[Path] = []
    for text in paths:
        p = Path(text)
        if not p.exists():
            raise FileNotFoundError(f"no feature file or folder at {p}")
        inner = sorted(c for c in p.iterdir() if c.is_dir() or c.suffix.lower() in SUFFIXES) if p.is_dir() else []
        own = is_featureset(p) or (p.is_dir() and any(p.glob("features*")))
        out += [p] if (own or not inner or not p.is_dir()) else inner
    return out


def _many_one_layer(args) -> None:
    if len(args.checkpoints) < 2:
        raise ValueError("repsim many needs at least two checkpoints")
    if not args.arch:
        raise ValueError("checkpoints need --arch")
    measure = args.measures[0]
    loader = _loader(args, load_model(args.checkpoints[0], args.arch, num_classes=args.num_classes))
    matrix = compare_many(
        args.checkpoints,
        loader,
        layer=args.layer,
        arch=args.arch,
        measure=measure,
        pool=args.pool,
        device=args.device,
        max_samples=args.max_samples,
        cache_dir=args.cache,
        memory=args.memory,
        sketch=args.sketch,
        calibrate=args.calibrate or None,
        knn=args.knn,
    )
    out = Path(args.out)
    from .pipeline.plotting import heatmap

    stem = f"many_{measure}" + ("_calibrated" if args.calibrate else "")
    written = [atomic_write_text(out / f"{stem}.csv", matrix.to_csv())]
    title = f"{measure} at {args.layer}" + (" (calibrated)" if args.calibrate else "")
    ax = heatmap(matrix, title=title, measure=measure)  # the scale compare's heatmaps use
    written.append(atomic_save_figure(ax.figure, out / f"{stem}.png", dpi=120))
    print(matrix.round(4).to_string())
    print("\nwrote:\n" + "\n".join(f"  {p}" for p in written))


def cmd_brain(args) -> None:
    from .pipeline.brain import compare_brain, image_folder_loader, load_rdm_file

    model = load_model(args.checkpoint, args.arch, num_classes=args.num_classes)
    loader = image_folder_loader(args.images, image_size=args.image_size or 224)
    table = compare_brain(model, loader, load_rdm_file(args.rdms), layers=_layers(args.layers), method=args.method,
                          bootstrap=args.bootstrap, n_resamples=args.n_resamples, device=args.device)  # fmt: skip
    print(table[["layer", "mean", "ci_low", "ci_high", "ceiling_lower", "ceiling_upper"]].round(4).to_string())
    print("\nwrote:\n  " + str(atomic_write_text(Path(args.out) / "brain.csv", table.to_csv(index=False))))


def cmd_extract(args) -> None:
    from .networks.features import extract_features

    model = load_model(args.checkpoint, args.arch, num_classes=args.num_classes)
    layers = None if args.layers in (None, "all") else _layers(args.layers)
    out = Path(args.out)
    extract_features(
        model,
        _loader(args, model),
        layers=layers,
        pool=args.pool,
        device=args.device,
        max_samples=None if is_distributed() else args.max_samples,
        memory=args.memory,
        out=out,
        name=args.name or Path(args.checkpoint).stem,
        meta={"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split},
        progress=rank_and_world()[0] == 0,
    )
    if rank_and_world()[0] == 0:
        print(f"wrote:\n  {out} (a FeatureSet: repsim.load_features({str(out)!r}))")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", default="digits", help="digits | fashion-mnist[:ROOT] | cifar10:ROOT | cifar100:ROOT | folder:ROOT"
    )
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=None, help="resize + centre crop (default: native size)")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--pool", default="mean", choices=["mean", "flatten"], help="how conv maps become vectors")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: read from checkpoint)")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--memory", default=None, help="memory budget, e.g. 8GB (default: 60%% of the available memory)")
    p.add_argument("--sketch", type=int, default=None, help="project layers wider than K to K dims (an estimator)")
    p.add_argument(
        "--knn", default=None, choices=["exact", "approx", "auto"],
        help="neighbour measures' kNN lists: exact search, a faiss index with measured recall, or auto",
    )  # fmt: skip


def _measures_arg(p: argparse.ArgumentParser, flags: list[str], default: list[str], names: list[str]) -> None:
    # metavar NAME: the choices are listed once, in the help text, not in the usage line and again there
    listed = ", ".join(names).replace("%", "%%")  # argparse expands %-formats in help strings
    p.add_argument(*flags, nargs="+", default=default, choices=names, metavar="NAME",
                   help=f"measures (default: {' '.join(default)}); one or more of: {listed}")  # fmt: skip


_CALIBRATE_HELP = "calibrated similarity (0 = chance) from N permutations shared by all layers"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="repsim", description="Representational similarity of neural networks.")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("layers", help="list the layer names of an architecture")
    p.add_argument("arch", help="torchvision/timm name or package.module:function")
    p.add_argument("--all", action="store_true", help="every module, not just leaves and top-level blocks")
    p.add_argument("--num-classes", type=int, default=None)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("compare", help="compare two checkpoints layer by layer")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--arch", required=True)
    p.add_argument("--arch-b", default=None, help="architecture of B when it differs from A")
    p.add_argument("--layers", default=None, help="comma-separated module names (default: top-level blocks)")
    p.add_argument("--layers-b", default=None)
    _measures_arg(p, ["--measures"], ["linear_cka", "debiased_cka", "rsa"], available_measures())
    p.add_argument("--sample-cap", type=int, default=5000, help="samples kept for RSA/kernel measures and inference")
    p.add_argument("--dry-run", action="store_true", help="print the memory plan (routes, bytes) and stop")
    p.add_argument("--permutations", type=int, default=0, help="permutation test with this many permutations")
    p.add_argument("--bootstrap", type=int, default=0, help="confidence intervals from this many resamples")
    p.add_argument("--calibrate", type=int, default=0, metavar="N", help=_CALIBRATE_HELP)
    p.add_argument(
        "--adjust", default="holm", choices=["holm", "bh", "none"], help="p-value adjustment over the layer grid"
    )
    _data_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("many", help="every model pair x every layer pair of many checkpoints or stored features")
    p.add_argument("checkpoints", nargs="*", help="checkpoints (run over --data with --arch)")
    p.add_argument("--features", nargs="+", default=None, metavar="PATH",
                   help="stored features: FeatureSet folders, .npy/.npz/.safetensors/.h5/.pt files, thingsvision, "
                   "Net2Brain or platonic-rep outputs, or a folder of them")  # fmt: skip
    p.add_argument("--arch", default=None)
    p.add_argument("--layers", default="all", help="'all' (default) or comma-separated layer names")
    p.add_argument("--layer", default=None, help="deprecated: one layer, the 0.3 N x N matrix")
    _measures_arg(p, ["--measures", "--measure"], ["linear_cka"], registered_names())
    p.add_argument("--aggregate", default="max", choices=["max", "diagonal", "best_match", "mean"],
                   help="how a model pair's layer grid becomes one number")  # fmt: skip
    p.add_argument("--join", default="exact", choices=["exact", "inner"], help="how sample ids are matched")
    p.add_argument("--block-models", type=int, default=None, help="models per group (default: the memory planner's)")
    p.add_argument("--cache", default=None, help="folder to cache extracted features in (keyed on content)")
    p.add_argument("--calibrate", type=int, default=0, metavar="N", help=_CALIBRATE_HELP + " (writes that matrix)")
    _data_args(p)
    p.set_defaults(func=cmd_many, max_samples=5000)

    p = sub.add_parser("brain", help="every layer's RDM against subject RDMs, with the noise ceiling")
    p.add_argument("checkpoint")
    p.add_argument("--arch", required=True)
    p.add_argument("--images", required=True, help="folder of the stimuli, in the RDMs' order by sorted file name")
    p.add_argument("--rdms", required=True, help=".npy/.npz of subject RDMs (subjects, n, n) or (subjects, M)")
    p.add_argument("--layers", default=None, help="comma-separated module names (default: top-level blocks)")
    p.add_argument("--method", default="spearman", help="RDM comparator (see repsim.compare_rdms)")
    p.add_argument("--bootstrap", default=None, choices=["subjects", "stimuli", "both"])
    p.add_argument("--n-resamples", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="results", help="output folder")
    p.set_defaults(func=cmd_brain)

    p = sub.add_parser("extract", help="store a checkpoint's layer features as a FeatureSet folder")
    p.add_argument("checkpoint")
    p.add_argument("--arch", required=True)
    p.add_argument("--layers", default="all", help="'all' (the default layers) or comma-separated layer names")
    p.add_argument("--name", default=None, help="the model's name in the metadata (default: the file's stem)")
    _data_args(p)
    p.set_defaults(func=cmd_extract)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = init_from_env() if args.command in ("compare", "many", "extract") else False
    if getattr(args, "device", None) is None and hasattr(args, "device"):
        args.device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    try:
        args.func(args)
    except (ValueError, DatasetNotFoundError, FileNotFoundError) as err:
        print(f"repsim: error: {err}", file=sys.stderr)
        return 2
    finally:
        if started:
            close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
