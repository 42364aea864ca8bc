"""CL-NSCL alignment across temperatures tau in {0.1, 0.5, 1.0}; the theory predicts it rises with tau."""

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, final, parser, run, save, summarise, sweep

args = parser(__doc__).parse_args()
rows = []
for tau in sweep((0.1, 0.5, 1.0), args):
    config, out = base_config(args, "02_temperature", objectives=["cl", "nscl"], tau=tau)
    for seed in range(args.seeds):
        for layer in ("encoder", "projector"):
            last = final(run(config, out, f"tau{tau}", seed), layer=layer)
            rows.append({"tau": tau, "seed": seed, "layer": layer, "value": float(last["value"].iloc[0])})
table = pd.DataFrame(rows)
ax = sns.pointplot(data=table, x="tau", y="value", hue="layer", errorbar="sd", capsize=0.1)
ax.set(ylabel="final CKA(CL, NSCL)", title=f"temperature ({args.seeds} seeds, sd bars)")
print(summarise(table, ["layer", "tau"]).to_string(index=False))
save(table, ax.figure, out, "temperature")
plt.close("all")
