import dataclasses

import pandas as pd
import pytest
import torch

from zoo.config import TrainConfig
from zoo.train import Trainer


def tiny(tmp_path, **kw) -> TrainConfig:
    values = dict(
        data="digits",
        epochs=2,
        batch_size=128,
        eval_every=1,
        checkpoint_every=1,
        reference_samples=150,
        warmup_epochs=1,
        out=str(tmp_path / "run"),
        progress=False,
        final_probes=False,
        proj_hidden=32,
        proj_out=16,
    )
    values.update(kw)
    return TrainConfig(**values)


def _weights(trainer):
    return {r: {k: v.clone() for k, v in m.state_dict().items()} for r, m in trainer.models.items()}


def _equal(a, b):
    return all(torch.equal(a[r][k], b[r][k]) for r in a for k in a[r])


def test_control_stays_identical_and_models_diverge(tmp_path):
    trainer = Trainer(tiny(tmp_path, objectives=["cl", "nscl", "ce"]))
    trainer.run()
    cl, control, nscl = (trainer.models[r].state_dict() for r in ("cl", "cl_control", "nscl"))
    assert all(torch.equal(cl[k], control[k]) for k in cl)
    assert not all(torch.equal(cl[k], nscl[k]) for k in cl)
    log = pd.DataFrame(trainer.log)
    last = log[(log.epoch == 2) & (log.objective == "cl_control")].set_index(["layer", "measure"])["value"]
    assert last[("encoder", "linear_cka")] == pytest.approx(1.0, abs=1e-12)
    assert last[("encoder", "weight_distance")] == 0.0
    start = log[(log.epoch == 0) & (log.measure == "linear_cka")]
    assert len(start) and (start["value"] - 1).abs().max() < 1e-9  # one initial model for everyone


def test_same_seed_same_run(tmp_path):
    a = Trainer(tiny(tmp_path / "a", epochs=1, objectives=["cl", "supcon"], control=False))
    b = Trainer(tiny(tmp_path / "b", epochs=1, objectives=["cl", "supcon"], control=False))
    a.run()
    b.run()
    assert _equal(_weights(a), _weights(b))
    c = Trainer(tiny(tmp_path / "c", epochs=1, objectives=["cl", "supcon"], control=False, seed=1))
    c.run()
    assert not _equal(_weights(a), _weights(c))


def test_resume_is_bit_identical(tmp_path):
    cfg = tiny(tmp_path / "full", epochs=3, objectives=["cl", "nscl"], control=False, checkpoint_every=1)
    full = Trainer(cfg)
    full.run()
    killed_cfg = dataclasses.replace(cfg, out=str(tmp_path / "killed"))
    killed = Trainer(killed_cfg)
    killed.train_epoch()
    killed.train_epoch()
    killed.save_checkpoint()  # ... and then the process dies
    resumed = Trainer(killed_cfg)
    resumed.run(resume=True)
    assert resumed.epoch == 3 and _equal(_weights(full), _weights(resumed))
    assert resumed.lr_sum == full.lr_sum
    # the killed run logged nothing before its checkpoint; what came after it must match exactly,
    # the theory bound (which needs the learning-rate sum carried over) included
    after = [pd.DataFrame(t.log).query("epoch == 3").reset_index(drop=True) for t in (full, resumed)]
    assert "frobenius_gap_bound" in set(after[0]["measure"])
    pd.testing.assert_frame_equal(after[0], after[1])
    with pytest.raises(ValueError, match=r"config differs in \[.*'tau'\]"):
        Trainer(dataclasses.replace(killed_cfg, tau=0.3)).run(resume=True)


def test_checkpoints_are_weights_only_loadable(tmp_path):
    trainer = Trainer(tiny(tmp_path, epochs=1, objectives=["cl"], control=False))
    trainer.run()
    state = torch.load(trainer.latest_checkpoint(), weights_only=True)
    assert state["epoch"] == 1 and set(state["models"]) == {"cl"}


def test_cli_end_to_end_two_epochs(tmp_path, capsys):
    from zoo.__main__ import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--objectives",
                "cl",
                "nscl",
                "supcon",
                "ce",
                "balanced",
                "--epochs",
                "2",
                "--batch-size",
                "128",
                "--eval-every",
                "1",
                "--reference-samples",
                "150",
                # one strength: the pipeline is under test here, the cross-validation in test_probes.py
                "--probe-l2-grid",
                "1e-3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for name in ("report.md", "alignment.csv", "final_probes.csv", "alignment.png", "probes.png"):
        assert (out / name).exists() and str(out / name) in printed
    report = (out / "report.md").read_text()
    assert "Does NSCL track CL more closely" in report and "control" in report
    assert "With 95 % paired intervals" in report and "NSCL - ce" in report
    log = pd.read_csv(out / "alignment.csv")
    paired = log[log["measure"] == "paired_debiased_cka"]
    assert set(paired["objective"]) == {"nscl-ce", "nscl-supcon"}
    assert (paired["ci_low"] <= paired["value"]).all() and (paired["value"] <= paired["ci_high"]).all()
    last = log[(log["epoch"] == 2) & (log["measure"] == "linear_cka") & (log["objective"] == "ce")]
    assert last[["ci_low", "ci_high"]].notna().all().all()
    assert TrainConfig.load(out / "config.json").epochs == 2
    probes = pd.read_csv(out / "final_probes.csv")
    assert set(probes["objective"]) == {"cl", "nscl", "supcon", "ce", "balanced", "cl_control"}
    # the saved encoders load into repsim.compare by architecture name
    import repsim

    model = repsim.load_model(out / "models" / "nscl.safetensors", "zoo.models:digits_model")
    assert model.classifier.out_features == 10


def test_config_validation_and_files(tmp_path):
    with pytest.raises(ValueError, match="unknown objective"):
        TrainConfig(objectives=["cl", "byol"])
    with pytest.raises(ValueError, match="must include 'cl'"):
        TrainConfig(objectives=["nscl"])
    path = tmp_path / "c.toml"
    path.write_text('data = "digits"\nepochs = 3\nobjectives = ["cl", "nscl"]\n')
    assert TrainConfig.load(path).objectives == ["cl", "nscl"]
    path.write_text("epochz = 3\n")
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.load(path)
    assert TrainConfig(batch_size=1024, lr=0.3).scaled_lr() == pytest.approx(1.2)
    assert TrainConfig(batch_size=1024, lr=0.3, lr_scaling="sqrt").scaled_lr() == pytest.approx(0.6)
    assert TrainConfig(batch_size=4096, lr=0.3, lr_scaling="fourth_root").scaled_lr() == pytest.approx(0.6)
