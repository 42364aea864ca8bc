"""Batch size x learning-rate scaling. Prediction: with lr scaled O(B) alignment falls as B grows;
with O(sqrt B) or less it holds or rises."""

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, final_rows, parser, save, summarise, sweep

args = parser(__doc__).parse_args()
rows = []
sizes = (64, 256) if not args.full else (256, 1024)
for scaling in sweep(("linear", "sqrt", "fourth_root"), args):
    for batch in sizes:
        # lr is given at B = 256; a common epoch budget so every run sees the data equally often
        config, out = base_config(
            args,
            "04_batch_scaling",
            objectives=["cl", "nscl"],
            batch_size=batch,
            lr_scaling=scaling,
            epochs=args.epochs or 20,
        )
        rows += final_rows(
            config, out, f"B{batch}_{scaling}", args.seeds, ("encoder",), batch_size=batch, scaling=scaling
        )
table = pd.DataFrame(rows)
ax = sns.pointplot(data=table, x="batch_size", y="value", hue="scaling", errorbar="sd", capsize=0.1, dodge=0.2)
ax.set(ylabel="final encoder CKA(CL, NSCL)", title=f"batch size x lr scaling ({args.seeds} seeds)")
print(summarise(table, ["scaling", "batch_size"]).to_string(index=False))
save(table, ax.figure, out, "batch_scaling")
plt.close("all")
