"""The run report: alignment plots, probe plots and a markdown summary that reads the claim."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from repsim.core.io import atomic_save_figure, atomic_write_text

from .config import TrainConfig

PLOTTED = ("linear_cka", "rsa", "frobenius_gap", "weight_distance", "knn_top1")
SUMMARY = (
    "linear_cka",
    "debiased_cka",
    "rsa",
    "frobenius_gap",
    "cka_lower_bound",
    "rsa_lower_bound",
    "weight_distance",
)


def final_alignment(log: pd.DataFrame) -> pd.DataFrame:
    """objective x (layer, measure) at the last evaluated epoch."""
    evals = log[(log["measure"] != "loss") & ~log["measure"].astype(str).str.startswith("paired_")]
    last = evals[evals["epoch"] == evals["epoch"].max()]
    return last.pivot_table(index="objective", columns=["layer", "measure"], values="value")


def claim_lines(final: pd.DataFrame) -> list[str]:
    """Whether CL-NSCL alignment ends above CL-CE and CL-SupCon, per layer and measure, with the numbers."""
    lines = []
    for layer in ("encoder", "projector"):
        for measure, higher_is_closer in (("linear_cka", True), ("rsa", True), ("frobenius_gap", False)):
            col = (layer, measure)
            if col not in final.columns or "nscl" not in final.index:
                continue
            nscl = final.loc["nscl", col]
            rivals = {o: final.loc[o, col] for o in ("ce", "supcon") if o in final.index}
            if not rivals:
                continue
            closer = all((nscl > v) if higher_is_closer else (nscl < v) for v in rivals.values())
            others = ", ".join(f"CL-{o} {v:.3f}" for o, v in rivals.items())
            verdict = "holds" if closer else "does NOT hold"
            lines.append(f"- {layer} {measure}: CL-NSCL {nscl:.3f} vs {others} -> the claim {verdict}")
    return lines


def claim_interval_lines(log: pd.DataFrame) -> list[str]:
    """The claim with its interval: NSCL - rival alignment differences whose paired CI excludes 0."""
    if "p_value" not in log.columns:
        return []
    paired = log[log["measure"].astype(str).str.startswith("paired_")]
    lines = []
    for (layer, measure), rows in paired.groupby(["layer", "measure"], sort=False):
        parts, holds = [], True
        for row in rows.itertuples():
            rival = row.objective.split("-", 1)[1]
            parts.append(f"NSCL - {rival} {row.value:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}]")
            holds &= row.ci_low > 0
        verdict = "holds with its interval" if holds else "is NOT established by the intervals"
        lines.append(f"- {layer} {measure.removeprefix('paired_')}: {'; '.join(parts)} -> the claim {verdict}")
    return lines


def write_report(out, cfg: TrainConfig) -> list[Path]:
    """report.md and the figures of a run directory (alignment, losses, theory, probes); the paths written."""
    out = Path(out)
    log = pd.read_csv(out / "alignment.csv")
    probes_path = out / "final_probes.csv"
    probes = pd.read_csv(probes_path) if probes_path.exists() else pd.DataFrame()
    written = _figures(out, log, probes, cfg)
    written.insert(0, atomic_write_text(out / "report.md", "\n".join(_markdown(log, probes, cfg))))
    return written


def _figures(out: Path, log: pd.DataFrame, probes: pd.DataFrame, cfg: TrainConfig) -> list[Path]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    written = []
    evals = log[log["measure"].isin(PLOTTED)].copy()
    if len(evals):
        grid = sns.relplot(
            data=evals,
            x="epoch",
            y="value",
            hue="objective",
            style="layer",
            col="measure",
            col_wrap=3,
            kind="line",
            marker="o",
            height=2.8,
            aspect=1.25,
            facet_kws={"sharey": False},
        )
        grid.figure.suptitle(f"alignment with CL over training ({cfg.data}, tau={cfg.tau})", y=1.02)
        written.append(atomic_save_figure(grid.figure, out / "alignment.png", dpi=110, bbox_inches="tight"))
        plt.close(grid.figure)
    losses = log[log["measure"] == "loss"]
    if len(losses):
        _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")  # never draw into someone else's axes
        sns.lineplot(data=losses, x="epoch", y="value", hue="objective", ax=ax)
        ax.set(ylabel="training loss", yscale="log")
        written.append(atomic_save_figure(ax.figure, out / "losses.png", dpi=110, bbox_inches="tight"))
        plt.close(ax.figure)
    bound = log[
        (log["measure"].isin(["frobenius_gap", "frobenius_gap_bound"]))
        & (log["objective"] == "nscl")
        & (log["layer"] == "projector")
    ]
    if bound["measure"].nunique() == 2:
        _, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
        sns.lineplot(data=bound, x="epoch", y="value", hue="measure", marker="o", ax=ax)
        ax.set(
            yscale="log",
            ylabel="|Sigma_CL - Sigma_NSCL|_F (projector)",
            title="measured gap vs the bound of arXiv 2510.08852",
        )
        written.append(atomic_save_figure(ax.figure, out / "theory.png", dpi=110, bbox_inches="tight"))
        plt.close(ax.figure)
    if len(probes):
        top1 = probes[probes["metric"].isin(["top1", "1-shot", "5-shot"])].copy()
        top1["probe"] = top1["probe"] + " " + top1["metric"]
        grid = sns.catplot(data=top1, x="objective", y="value", col="probe", kind="bar", height=2.8, aspect=1.2)
        written.append(atomic_save_figure(grid.figure, out / "probes.png", dpi=110, bbox_inches="tight"))
        plt.close(grid.figure)

    return written


def _markdown(log: pd.DataFrame, probes: pd.DataFrame, cfg: TrainConfig) -> list[str]:
    final = final_alignment(log)
    md = [
        f"# Coupled training report: {cfg.data}",
        "",
        f"Objectives {', '.join(cfg.run_names)}; backbone {cfg.backbone}; {cfg.epochs} epochs; batch "
        f"{cfg.batch_size}; {cfg.optimizer} lr {cfg.scaled_lr():.3g} ({cfg.lr_scaling} scaling); tau {cfg.tau}; "
        f"include_positive {cfg.include_positive}; seed {cfg.seed}.",
        "",
        "## Does NSCL track CL more closely than CE and SupCon?",
        "",
        *claim_lines(final),
        "",
    ]
    interval_lines = claim_interval_lines(log)
    if interval_lines:
        md += [
            f"With 95 % paired intervals ({cfg.inference_resamples} half-sample resamples of the reference set; "
            "the difference of CL-NSCL and CL-rival alignment on the same samples):",
            "",
            *interval_lines,
            "",
        ]
    if ("projector", "frobenius_gap_bound") in final.columns and "nscl" in final.index:
        row = final.loc["nscl", "projector"]
        md += [
            f"Theory (arXiv 2510.08852, delta = 0.05): measured projector gap |Sigma_CL - Sigma_NSCL|_F = "
            f"{row['frobenius_gap']:.2f} on the reference set (the test split, at most {cfg.reference_samples} "
            "samples); the bound is "
            f"{row['frobenius_gap_bound']:.3g}, which implies CKA >= {row['cka_bound_theory']:.3f} and RSA >= "
            f"{row['rsa_bound_theory']:.3f} (measured {row['linear_cka']:.3f} and {row['rsa']:.3f}). "
            "See theory.png.",
            "",
        ]
    if "cl_control" in final.index:
        cka = final.loc["cl_control", ("encoder", "linear_cka")]
        wd = final.loc["cl_control", ("encoder", "weight_distance")]
        ok = "passed" if abs(cka - 1) < 1e-9 and wd == 0 else "FAILED"
        md += [
            f"Shared-randomness control (a second CL run): encoder CKA {cka:.12f}, weight distance {wd:g} -> {ok}.",
            "",
        ]
    md += ["## Alignment with CL at the end", ""]
    for layer in ("encoder", "projector"):
        if layer in final.columns.get_level_values(0):
            table = final[layer].drop(index="cl", errors="ignore")
            table = table[[c for c in SUMMARY if c in table.columns]]
            md += [f"{layer} output:", "", "```", table.round(4).to_string(), "```", ""]
    if len(probes):
        table = probes.pivot_table(index="objective", columns=["probe", "metric"], values="value")
        md += ["## Frozen-feature probes (encoder)", "", "```", table.round(4).to_string(), "```", ""]
    md += [
        "Files: alignment.csv (tidy log), final_probes.csv, alignment.png, losses.png, probes.png, "
        "models/*.safetensors (compare them with `repsim compare`), checkpoints/.",
        "",
    ]
    return md
