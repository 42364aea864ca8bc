"""The balanced loss's alpha x lambda grid: linear-probe accuracy and CKA with CL (arXiv 2510.10572)."""

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, parser, save, sweep

import probes
import repsim
from zoo.train import Trainer

args = parser(__doc__, default_seeds=3).parse_args()
# the smoke run fits one L2 strength instead of cross-validating the grid (46 fits per probe)
probe_options = {"l2_grid": (1e-3,)} if args.smoke else {}
rows = []
for alpha in sweep((1.0, 2.0, 5.0), args):
    for lam in sweep((0.5, 1.0, 2.0), args):
        config, out = base_config(
            args,
            "06_balanced_grid",
            objectives=["cl", "balanced"],
            balanced_alpha=alpha,
            balanced_lam=lam,
            epochs=args.epochs or 15,
        )
        for seed in range(args.seeds):
            cfg = dataclasses.replace(config, seed=seed, out=str(out / "runs" / f"a{alpha}_l{lam}_seed{seed}"))
            trainer = Trainer(cfg)
            trainer.run()
            model = trainer.models["balanced"]
            train_x, train_y = probes.extract(model, trainer.bank_loader, "encoder", progress=False)
            test_x, test_y = probes.extract(model, trainer.ref_loader, "encoder", progress=False)
            top1 = probes.linear_probe(train_x, train_y, test_x, test_y, seed=seed, **probe_options).top1
            cl_x, _ = probes.extract(trainer.models["cl"], trainer.ref_loader, "encoder", progress=False)
            cka = repsim.linear_cka(cl_x, test_x).item()
            rows.append({"alpha": alpha, "lambda": lam, "seed": seed, "linear_probe_top1": top1, "cka_with_cl": cka})
table = pd.DataFrame(rows)
means = table.groupby(["alpha", "lambda"])[["linear_probe_top1", "cka_with_cl"]].mean()
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
sns.heatmap(means["linear_probe_top1"].unstack(), annot=True, fmt=".3f", ax=axes[0], cmap="viridis")
axes[0].set(title="linear probe top-1 (mean over seeds)")
sns.heatmap(means["cka_with_cl"].unstack(), annot=True, fmt=".3f", ax=axes[1], cmap="magma")
axes[1].set(title="encoder CKA with CL (mean over seeds)")
print(table.groupby(["alpha", "lambda"])[["linear_probe_top1", "cka_with_cl"]].agg(["mean", "std"]).to_string())
save(table, fig, out, "balanced_grid")
plt.close("all")
