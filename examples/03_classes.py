"""CL-NSCL alignment with C' classes (digits subsets; CIFAR-100 subsets at scale); predicted to rise with C'."""

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from _common import base_config, final_rows, parser, save, summarise, sweep

args = parser(__doc__).parse_args()
rows = []
for classes in sweep((2, 4, 6, 8, 10), args):
    config, out = base_config(
        args, "03_classes", objectives=["cl", "nscl"], classes=classes, batch_size=128 if not args.full else 1024
    )
    rows += final_rows(config, out, f"C{classes}", args.seeds, classes=classes)
table = pd.DataFrame(rows)
ax = sns.pointplot(data=table, x="classes", y="value", hue="layer", errorbar="sd", capsize=0.1)
ax.set(ylabel="final CKA(CL, NSCL)", xlabel="number of classes C'", title=f"classes ({args.seeds} seeds)")
print(summarise(table, ["layer", "classes"]).to_string(index=False))
save(table, ax.figure, out, "classes")
plt.close("all")
