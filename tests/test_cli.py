"""The command line: thin commands, clear errors, complete run directories."""

import json

import yaml
from typer.testing import CliRunner

from advlab.cli.main import app

runner = CliRunner()


def test_data_list_shows_every_dataset():
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    for name in ("mnist", "fashion-mnist", "cifar10", "digits", "ring8", "grid25"):
        assert name in res.output


def test_data_info_digits_reports_counts():
    res = runner.invoke(app, ["data", "info", "digits"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "test" in res.output


def test_unknown_names_are_user_errors_listing_valid_ones(tmp_path):
    res = runner.invoke(app, ["train", "classifier", "--model", "lenet", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "unknown model 'lenet'" in res.output and "lenet5" in res.output
    res = runner.invoke(app, ["train", "classifier", "--dataset", "mnits", "--out",
                              str(tmp_path / "r2")])
    assert res.exit_code == 2 and "mnist" in res.output
    res = runner.invoke(app, ["train", "classifier", "--optimizer", "rmsprop", "--out",
                              str(tmp_path / "r3")])
    assert res.exit_code == 2 and "adam" in res.output


def test_train_then_eval_then_resume_with_more_epochs(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "lrl",
                              "--epochs", "2", "--device", "cpu", "--no-progress",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == "lrl" and cfg["train"]["epochs"] == 2
    res = runner.invoke(app, ["eval", str(out), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["test_acc"] <= 1 and len(metrics["per_class_acc"]) == 10
    assert yaml.safe_load((tmp_path / "ev" / "config.yaml").read_text())["command"] == "eval"
    assert (tmp_path / "ev" / "log.txt").is_file()
    # Extending a finished run: --resume with more epochs continues from epoch 2.
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "lrl",
                              "--epochs", "3", "--device", "cpu", "--no-progress",
                              "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # A resume that changes anything but epochs/device is refused.
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--model", "lrl",
                              "--epochs", "4", "--lr", "0.5", "--no-progress", "--out", str(out),
                              "--resume"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "differs" in text
    assert "train.lr: 0.003 in the run, 0.5 given" in text  # digits: its default lr
    # A bare --resume takes the run's own options (here: lrl on digits, not the defaults).
    res = runner.invoke(app, ["train", "classifier", "--epochs", "4", "--no-progress",
                              "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


def test_eval_of_a_missing_run_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["eval", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no model weights" in res.output


def test_config_file_rejects_unknown_keys(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    res = runner.invoke(app, ["train", "classifier", "--config", str(cfg), "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "did you mean 'epochs'" in res.output


def test_config_file_top_level_keys_are_checked_too(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("modle: mlp\n")
    res = runner.invoke(app, ["train", "classifier", "--config", str(cfg), "--out",
                              str(tmp_path / "r")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "did you mean 'model'" in text and "dataset" in text
    cfg.write_text("command: train generative\n")
    res = runner.invoke(app, ["train", "classifier", "--config", str(cfg), "--out",
                              str(tmp_path / "s")])
    assert res.exit_code == 2 and "'train generative'" in " ".join(res.output.split())


def test_command_line_wins_over_the_config_file_and_a_run_config_replays(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: ring8\nmodel: lrl\ntrain: {epochs: 5, batch_size: 64}\n")
    first = tmp_path / "first"
    res = runner.invoke(app, ["train", "classifier", "--config", str(cfg), "--dataset",
                              "digits", "--epochs", "1", "--defense", "fgsm-at",
                              "--defense-param", "eps=0.05", "--no-progress",
                              "--out", str(first)])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert (saved["dataset"], saved["model"]) == ("digits", "lrl")
    assert saved["train"]["epochs"] == 1 and saved["train"]["batch_size"] == 64
    # the run's own config.yaml replays the job, defense included; --seed changes one thing
    second = tmp_path / "second"
    res = runner.invoke(app, ["train", "classifier", "--config", str(first / "config.yaml"),
                              "--seed", "1", "--no-progress", "--out", str(second)])
    assert res.exit_code == 0, res.output
    again = yaml.safe_load((second / "config.yaml").read_text())
    assert again["train"]["seed"] == 1
    assert {**again, "train": {**again["train"], "seed": 0}} == saved


def test_config_file_values_of_the_wrong_type_are_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    for text, message in (("train: 5\n", "expected the 'train' section to be a mapping, got 5"),
                          ("model_kwargs: 5\n", "'model_kwargs' section to be a mapping"),
                          ("train: {lr: abc}\n", "lr: expected a number, got 'abc'"),
                          ("train: {epochs: 1.7}\n", "epochs: expected an integer, got 1.7"),
                          ("n_train: many\n", "n_train: expected an integer or null"),
                          ("defense_config: [1]\n", "defense_config"),
                          ("- 1\n", "expected a YAML mapping"),
                          ("train: {lr: [\n", "not valid YAML")):
        cfg.write_text(text)
        res = runner.invoke(app, ["train", "classifier", "--config", str(cfg), "--out",
                                  str(tmp_path / "r"), "--no-progress"])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and message in out, (text, out)
        assert not (tmp_path / "r").exists()


def test_bad_widths_name_the_option_and_leave_no_run_directory(tmp_path):
    for args, message in ((["--widths", "a"], "--widths: expected comma-separated integers"),
                          (["--widths", "32,,0"], "--widths: expected comma-separated integers"),
                          (["--model", "lrl", "--widths", "8"], "lrl"),
                          (["--dataset", "nope"], "unknown dataset")):
        res = runner.invoke(app, ["train", "classifier", *args, "--epochs", "1",
                                  "--no-progress", "--out", str(tmp_path / "r")])
        out = " ".join(res.output.split())
        assert res.exit_code == 2 and message in out, (args, out)
        assert not (tmp_path / "r").exists(), args
    res = runner.invoke(app, ["train", "generative", "--hidden", "8,x", "--epochs", "1",
                              "--no-progress", "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "--hidden: expected comma-separated integers" in res.output
    assert not (tmp_path / "g").exists()


def _digits_run(tmp_path, name="run", *extra):
    out = tmp_path / name
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--epochs", "2",
                              "--device", "cpu", "--no-progress", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return out


def test_companion_models_of_another_data_set_and_bad_protocol_settings_write_nothing(tmp_path):
    from advlab import models
    from advlab.weights import save_model

    run = _digits_run(tmp_path)
    save_model(tmp_path / "ring", models.create("mlp", dataset="ring8"), {"dataset": "ring8"})
    for args in (["eval", "robust", str(run), "--eps", "0.1", "--surrogate",
                  str(tmp_path / "ring")],
                 ["attack", str(run), "-a", "fgsm", "--eps", "0.1", "--surrogate",
                  str(tmp_path / "ring")]):
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "x")])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and "--surrogate" in text and "a model of 'ring8'" in text
        assert not (tmp_path / "x").exists()
    for bad in (["--steps", "0"], ["--restarts", "0"], ["--eot", "0"], ["--batch-size", "0"],
                ["--minimal", "cw"]):
        res = runner.invoke(app, ["eval", "robust", str(run), "--eps", "0.1", *bad,
                                  "--out", str(tmp_path / "y")])
        assert res.exit_code == 2 and "expected" in res.output, (bad, res.output)
        assert not (tmp_path / "y").exists(), bad


def test_training_errors_are_one_line_user_errors(tmp_path):
    res = runner.invoke(app, ["train", "classifier", "--lr", "inf", "--out", str(tmp_path / "a"),
                              "--no-progress"])
    assert res.exit_code == 2 and "lr: expected a finite positive number, got inf" in res.output
    assert not (tmp_path / "a").exists()
    res = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--lr", "1e30",
                              "--epochs", "1", "--out", str(tmp_path / "b"), "--no-progress"])
    assert res.exit_code == 2, res.output  # diverged: a message, not a traceback
    assert "loss became nan at epoch 1" in res.output and "lower learning rate" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_resume_refusals_name_the_problem(tmp_path):
    run = _digits_run(tmp_path)
    res = runner.invoke(app, ["train", "classifier", "--out", str(run), "--resume",
                              "--epochs", "1", "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "completed 2 epochs, more than --epochs 1" in text
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    ev = tmp_path / "ev"
    assert runner.invoke(app, ["eval", str(run), "--out", str(ev)]).exit_code == 0
    res = runner.invoke(app, ["train", "classifier", "--out", str(ev), "--resume",
                              "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "the configuration of 'eval'" in text
    res = runner.invoke(app, ["train", "generative", "--out", str(run), "--resume",
                              "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "a 'train classifier' run, not a 'train generative'" in text
    # a command without --resume does not offer it
    res = runner.invoke(app, ["eval", str(run), "--out", str(ev)])
    assert res.exit_code == 2 and "not empty" in res.output and "--resume" not in res.output
    res = runner.invoke(app, ["train", "classifier", "--out", str(run), "--no-progress"])
    assert res.exit_code == 2 and "--resume" in res.output


def test_a_misspelt_eval_subcommand_is_named(tmp_path):
    res = runner.invoke(app, ["eval", "robustt", "somerun"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "no command 'robustt' (did you mean 'robust'?)" in text


def test_unknown_or_missing_devices_leave_no_run_directory(tmp_path):
    import torch

    devices = ["foo"] + ([] if torch.cuda.is_available() else ["cuda"])
    for args in (["train", "classifier", "--epochs", "1", "--no-progress"],
                 ["demo", "--quick"]):
        for device in devices:
            res = runner.invoke(app, [*args, "--device", device, "--out", str(tmp_path / "d")])
            assert res.exit_code == 2 and "device" in res.output, (args, device, res.output)
            assert not (tmp_path / "d").exists(), (args, device)


def test_the_console_shows_summaries_and_the_log_goes_to_log_txt(tmp_path):
    quiet = runner.invoke(app, ["train", "classifier", "--model", "lrl", "--epochs", "1",
                                "--no-progress", "--device", "cpu", "--out", str(tmp_path / "q")])
    assert quiet.exit_code == 0, quiet.output
    assert "INFO" not in quiet.output and "test accuracy" in quiet.output
    assert "INFO advlab.train.loop" in (tmp_path / "q" / "log.txt").read_text()
    loud = runner.invoke(app, ["-v", "train", "classifier", "--model", "lrl", "--epochs", "1",
                               "--no-progress", "--device", "cpu", "--out", str(tmp_path / "v")])
    assert loud.exit_code == 0, loud.output
