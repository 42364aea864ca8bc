"""Calibrated similarity: the width confound, and whether "NSCL tracks CL" survives calibration.

python examples/09_calibration.py                 # digits, CPU, 3 seeds, a few minutes
python examples/09_calibration.py --full /data    # the objectives on CIFAR-100, ResNet-50, on a GPU

(a) Width confound. Two representations of the same n = 500 samples, at widths 16 .. 4096:
    "independent": Gaussian features with nothing shared (the null itself), and "random ReLU nets":
    two independently initialised 2-layer ReLU MLPs applied to the same random inputs (they share
    the inputs' geometry, nothing learned). Raw and calibrated (repsim.calibrate, B = 200,
    alpha = 0.05) linear CKA, debiased CKA and mutual kNN (k = 10).
(b) The zoo's objectives (CL, NSCL, CE, SupCon trained in lockstep from one initialisation, as in
    01_objectives.py): raw and calibrated CKA of each rival with CL at the encoder, calibrated
    with free permutations and class-stratified ones (groups=labels: does the alignment go
    beyond the shared class structure?), and the calibrated maximum over the 4 x 4 layer grid
    (encoder.layer1, encoder.layer2, encoder, projector).
"""

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from _common import base_config, parser, save
from tqdm.auto import tqdm

import repsim
from zoo.tracking import model_features
from zoo.train import Trainer

WIDTHS = (16, 64, 256, 1024, 4096)
MEASURES = {"linear_cka": {}, "debiased_cka": {}, "mutual_knn": {"k": 10}}
GRID_LAYERS = ["encoder.layer1", "encoder.layer2", "encoder", "projector"]
N_WIDTH = 500

p = parser(__doc__)
p.add_argument("--permutations", type=int, default=200)
args = p.parse_args()
config, out = base_config(args, "09_calibration", objectives=["cl", "nscl", "ce", "supcon"], epochs=30, eval_every=30)
n_perm = 20 if args.smoke else args.permutations


# ------------------------------------------------------------------ (a) the width confound
def random_relu_net(inputs: torch.Tensor, width: int, gen: torch.Generator) -> torch.Tensor:
    """A 2-layer ReLU MLP with He-initialised random weights, applied to ``inputs``."""
    h = inputs
    for _ in range(2):
        w = torch.randn(h.shape[1], width, generator=gen, dtype=torch.float64) * (2.0 / h.shape[1]) ** 0.5
        h = (h @ w).relu()
    return h


def width_rows(seed: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(N_WIDTH, 32, generator=gen, dtype=torch.float64)
    for width in (16, 512) if args.smoke else WIDTHS:  # the smoke run keeps to cheap widths
        pairs = {
            "independent": (
                torch.randn(N_WIDTH, width, generator=gen, dtype=torch.float64),
                torch.randn(N_WIDTH, width, generator=gen, dtype=torch.float64),
            ),
            "random ReLU nets": (random_relu_net(inputs, width, gen), random_relu_net(inputs, width, gen)),
        }
        for condition, (x, y) in pairs.items():
            for measure, opts in MEASURES.items():
                res = repsim.calibrate(x, y, measure, n_permutations=n_perm, seed=seed, **opts)
                rows.append({"part": "width", "condition": condition, "width": width, "measure": measure,
                             "seed": seed, "raw": res.observed, "calibrated": res.score,
                             "threshold": res.threshold, "p_value": res.p_value})  # fmt: skip
    return rows


# ------------------------------------------------------------------ (b) the objectives
def objective_rows(seed: int) -> list[dict]:
    cfg = dataclasses.replace(config, seed=seed, out=str(out / "runs" / f"objectives_seed{seed}"))
    trainer = Trainer(cfg)
    trainer.run(resume=True)
    feats, labels = {}, None
    for run, model in trainer.models.items():
        feats[run], labels = model_features(model, trainer.ref_loader, trainer.device, GRID_LAYERS)
    cl = feats["cl"]
    rows = []
    for rival in ("nscl", "ce", "supcon"):
        for measure in ("linear_cka", "debiased_cka"):
            base = {"part": "objectives", "condition": rival, "measure": measure, "seed": seed}
            for permutations, groups in (("free", None), ("within class", labels)):
                res = repsim.calibrate(
                    cl["encoder"], feats[rival]["encoder"], measure, n_permutations=n_perm, groups=groups, seed=seed
                )
                rows.append({**base, "layer": "encoder", "permutations": permutations, "raw": res.observed,
                             "calibrated": res.score, "threshold": res.threshold, "p_value": res.p_value})  # fmt: skip
            grid = repsim.calibrate_grid(
                [cl[k] for k in GRID_LAYERS],
                [feats[rival][k] for k in GRID_LAYERS],
                measure,
                aggregate="max",
                n_permutations=n_perm,
                seed=seed,
            )
            best = grid.cells.loc[grid.cells["observed"].idxmax()]
            rows.append({**base, "layer": "grid max", "permutations": "free", "raw": grid.observed,
                         "calibrated": grid.score, "threshold": grid.threshold, "p_value": grid.p_value,
                         "best_cell": f"{GRID_LAYERS[int(best['layer_a'])]} / {GRID_LAYERS[int(best['layer_b'])]}",
                         "best_cell_calibrated": best["calibrated"]})  # fmt: skip
    return rows


rows = []
for seed in tqdm(range(args.seeds), desc="width sweep (a)"):
    rows += width_rows(seed)
for seed in tqdm(range(args.seeds), desc="objectives (b)"):
    rows += objective_rows(seed)
table = pd.DataFrame(rows)

# ------------------------------------------------------------------ figure
fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
width = table[table["part"] == "width"].melt(
    id_vars=["condition", "width", "measure", "seed"], value_vars=["raw", "calibrated"], var_name="score"
)
for ax, condition in zip(axes[:2], ("independent", "random ReLU nets"), strict=True):
    sns.lineplot(data=width[width["condition"] == condition], x="width", y="value", hue="measure", style="score",
                 markers=True, errorbar="sd", ax=ax)  # fmt: skip
    ax.set(xscale="log", title=f"(a) {condition}, n = {N_WIDTH}", ylim=(-0.05, 1.02))
    ax.legend(fontsize=7)
objectives = table[(table["part"] == "objectives") & (table["measure"] == "linear_cka")]
enc = objectives[objectives["layer"] == "encoder"].melt(
    id_vars=["condition", "permutations", "seed"], value_vars=["raw", "calibrated"], var_name="score"
)
enc["what"] = enc["score"] + enc["permutations"].map({"free": "", "within class": " (within class)"})
enc = enc[~((enc["score"] == "raw") & (enc["permutations"] == "within class"))]
sns.barplot(data=enc, x="condition", y="value", hue="what", errorbar="sd", ax=axes[2])
axes[2].set(title="(b) linear CKA with CL, encoder", ylim=(0, 1.02), xlabel="")
axes[2].legend(fontsize=7)
grid_rows = objectives[objectives["layer"] == "grid max"].melt(
    id_vars=["condition", "seed"], value_vars=["raw", "calibrated"], var_name="score"
)
sns.barplot(data=grid_rows, x="condition", y="value", hue="score", errorbar="sd", ax=axes[3])
axes[3].set(title="(b) 4x4 grid maximum with CL", ylim=(0, 1.02), xlabel="")
fig.suptitle(f"calibrated similarity (B = {n_perm}, alpha = 0.05, {args.seeds} seeds, mean and sd)", y=1.02)
save(table, fig, out, "calibration")
plt.close("all")
summary = table.groupby(["part", "condition", "measure", "width", "layer", "permutations"], dropna=False)[
    ["raw", "calibrated"]
].agg(["mean", "std"])
print(summary.round(3).to_string())
