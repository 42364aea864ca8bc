"""CL-NSCL alignment across temperatures tau in {0.1, 0.5, 1.0}; the theory predicts it rises with tau."""

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, final_rows, parser, save, summarise, sweep

args = parser(__doc__).parse_args()
rows = []
for tau in sweep((0.1, 0.5, 1.0), args):
    config, out = base_config(args, "02_temperature", objectives=["cl", "nscl"], tau=tau)
    rows += final_rows(config, out, f"tau{tau}", args.seeds, tau=tau)
table = pd.DataFrame(rows)
ax = sns.pointplot(data=table, x="tau", y="value", hue="layer", errorbar="sd", capsize=0.1)
ax.set(ylabel="final CKA(CL, NSCL)", title=f"temperature ({args.seeds} seeds, sd bars)")
print(summarise(table, ["layer", "tau"]).to_string(index=False))
save(table, ax.figure, out, "temperature")
plt.close("all")
