"""Batch size x learning-rate scaling at a FIXED NUMBER OF STEPS, as arXiv 2510.08852 states the prediction:
with lr scaled O(B), sum eta_t grows with B and alignment falls; with O(sqrt B) or O(B^1/4) it holds or rises.
Logs sum eta_t and the bound beside the measured CL-NSCL CKA."""

import math

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from _common import base_config, final, parser, run, save, summarise, sweep

from zoo.theory import gap_bound_from_total
from zoo.train import make_optimizer


def lr_sum(config, steps_per_epoch: int) -> float:
    """Sum of the learning rates the trainer's schedule takes over the run (its lr_sum, computed exactly)."""
    opt, sched = make_optimizer(torch.nn.Linear(1, 1), config, steps_per_epoch)
    total = 0.0
    for t in range(config.epochs * steps_per_epoch):
        total += opt.param_groups[0]["lr"]
        sched.step_update(t + 1)
    return total


args = parser(__doc__).parse_args()
sizes = (64, 128, 256, 512) if not args.full else (256, 512, 1024, 2048)
sizes = (sizes[0], sizes[-1]) if args.smoke else sizes
# 210 = 21 x 10 = 10 x 21 = 5 x 42 = 2 x 105: exactly equal steps at B = 64..512 on digits' 1347 samples
steps = 2 if args.smoke else 210
rows = []
for scaling in sweep(("linear", "sqrt", "fourth_root"), args):
    for batch in sizes:
        config, out = base_config(
            args,
            "08_batch_fixed_steps",
            objectives=["cl", "nscl"],
            batch_size=batch,
            lr_scaling=scaling,
            warmup_epochs=0,
        )
        per_epoch = (1347 if not args.full else 50_000) // batch  # digits' training split has 1347 samples
        epochs = max(1, math.ceil(steps / per_epoch))
        config = type(config)(**{**config.__dict__, "epochs": epochs, "eval_every": epochs})
        eta = lr_sum(config, per_epoch)
        for seed in range(args.seeds):
            log = run(config, out, f"B{batch}_{scaling}", seed)
            last = log[log["epoch"] == log["epoch"].max()]

            def value(measure, layer="", objective="nscl", rows_=last):
                hit = rows_[(rows_["measure"] == measure) & (rows_["objective"] == objective)]
                hit = hit[hit["layer"] == layer] if layer else hit
                return float(hit["value"].iloc[0]) if len(hit) else math.nan

            enc = float(final(log, layer="encoder")["value"].iloc[0])
            proj = float(final(log, layer="projector")["value"].iloc[0])
            rows.append(
                {
                    "scaling": scaling,
                    "batch_size": batch,
                    "seed": seed,
                    "epochs": epochs,
                    "steps": int(last["step"].iloc[0]),
                    "encoder_cka": enc,
                    "projector_cka": proj,
                    "lr_sum": eta,
                    "bound": gap_bound_from_total(eta, epochs * per_epoch, batch, 10, config.tau),
                    "bound_logged": value("frobenius_gap_bound", "projector"),
                    "gap": value("frobenius_gap", "projector"),
                }
            )
table = pd.DataFrame(rows)
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
sns.pointplot(
    data=table, x="batch_size", y="encoder_cka", hue="scaling", errorbar="sd", capsize=0.1, dodge=0.2, ax=axes[0]
)
axes[0].set(ylabel="final encoder CKA(CL, NSCL)", title=f"equal steps ({args.seeds} seeds)")
sns.pointplot(data=table, x="batch_size", y="lr_sum", hue="scaling", ax=axes[1])
axes[1].set(ylabel="sum of eta_t", yscale="log")
print(summarise(table, ["scaling", "batch_size"], "encoder_cka").to_string(index=False))
print(table.groupby(["scaling", "batch_size"])[["steps", "lr_sum", "bound", "gap"]].mean().to_string())
save(table, fig, out, "batch_fixed_steps")
plt.close("all")
