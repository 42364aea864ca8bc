"""Weight-space distance against representation CKA over training: weights drift apart while CKA stays high."""

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, parser, run, save

ORDER = ["nscl", "ce"]
args = parser(__doc__).parse_args()
config, out = base_config(args, "05_weights_vs_cka", objectives=["cl", "nscl", "ce"], epochs=40, eval_every=4)
log = pd.concat([run(config, out, "weights", seed) for seed in range(args.seeds)])
keep = log[
    (log["layer"] == "encoder")
    & log["measure"].isin(["linear_cka", "weight_distance"])
    & log["objective"].isin(["nscl", "ce"])
]
wide = keep.pivot_table(index=["seed", "epoch", "objective"], columns="measure", values="value").reset_index()
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
sns.lineplot(
    data=keep, x="epoch", y="value", hue="objective", hue_order=ORDER, style="measure", errorbar="sd", ax=axes[0]
)
axes[0].legend(loc="center right", fontsize=8)
axes[0].set(title="CKA with CL and relative weight distance to CL")
sns.scatterplot(
    data=wide, x="weight_distance", y="linear_cka", hue="objective", hue_order=ORDER, size="epoch", ax=axes[1]
)
axes[1].set(title="CKA against weight distance (each dot: a seed at an epoch)")
save(wide, fig, out, "weights_vs_cka")
plt.close("all")
