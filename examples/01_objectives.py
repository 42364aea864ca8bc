"""CL against NSCL, CE, SupCon and the balanced loss: alignment with CL over training.

python examples/01_objectives.py                 # digits, CPU, 3 seeds, a few minutes
python examples/01_objectives.py --full /data    # CIFAR-100, ResNet-50, on a GPU
"""

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, parser, run, save

args = parser(__doc__).parse_args()
config, out = base_config(
    args, "01_objectives", objectives=["cl", "nscl", "supcon", "ce", "balanced"], epochs=40, eval_every=5
)
log = pd.concat([run(config, out, "objectives", seed) for seed in range(args.seeds)])
table = log[log["measure"].isin(["linear_cka", "rsa"]) & (log["objective"] != "cl")]
grid = sns.relplot(
    data=table,
    x="epoch",
    y="value",
    hue="objective",
    col="measure",
    row="layer",
    kind="line",
    errorbar="sd",
    height=2.8,
    aspect=1.3,
)
grid.figure.suptitle(f"alignment with CL ({args.seeds} seeds, mean and seed-to-seed sd)", y=1.02)
save(table, grid.figure, out, "objectives")
plt.close("all")
