import argparse
import subprocess
import sys

import pytest

from nucleograph.gnn import cli
from nucleograph.gnn.models import MODEL_NAMES


def _parser():
    parser = argparse.ArgumentParser(prog="nucleograph")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_parsers_build_without_torch():
    # every `nucleograph` command builds these parsers: the model registry (torch, DGL) stays unloaded
    code = (
        "import argparse, sys\n"
        "from nucleograph.gnn import cli\n"
        "cli.register(argparse.ArgumentParser().add_subparsers())\n"
        "assert 'torch' not in sys.modules, 'building the gnn parsers imported torch'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_model_choices_are_the_registry_and_unset_options_stay_unset():
    assert tuple(cli.MODEL_CHOICES) == MODEL_NAMES
    args = _parser().parse_args(["train", "--cohort", "c", "--model", "rsf-edge", "--lr", "0.1"])
    assert cli._given(args, "model", "epochs", "lr", "seed") == {"model": "rsf-edge", "lr": 0.1}
    assert args.patience is None and args.folds == 1


def test_unknown_model_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["train", "--cohort", "c", "--model", "gcn"])
    assert exc.value.code == 2 and "choose from 'rsf', 'rsf-edge'" in capsys.readouterr().err


def _help(*argv: str) -> str:
    with pytest.raises(SystemExit):
        _parser().parse_args([*argv, "--help"])


def test_help_shows_the_defaults(capsys):
    from nucleograph.gnn.train import TrainConfig

    _help("train")
    text = " ".join(capsys.readouterr().out.split()).split("options:")[1]  # argparse wraps lines
    # the numbers the help names (not imported by the parser: torch) are TrainConfig's
    for option, value in (("--epochs", TrainConfig.epochs), ("--lr", TrainConfig.lr), ("--seed", TrainConfig.seed),
                          ("--batch-size", TrainConfig.batch_size), ("--patience", TrainConfig.patience)):
        after = text.split(f"{option} {option.lstrip('-').upper().replace('-', '_')}")[1]
        assert after.split(")")[0].endswith(f"(default: {value}"), (option, after[:80])
    assert text.split("--ensemble K")[1].split(")")[0].endswith(f"(default: {TrainConfig.ensemble}, one model")
    for command, shown in (("explain", "(default: contribution)"), ("scores", "(default: csv)"),
                           ("render", "(default: 1)")):
        _help(command, *(["--run", "r0"] if command != "explain" else []))
        out = " ".join(capsys.readouterr().out.split())
        assert shown in out and "(default: None)" not in out and "(default: False)" not in out


def test_chance_flag_is_the_majority_share_of_the_test_images():
    from types import SimpleNamespace

    import numpy as np

    from nucleograph.gnn.service import _chance_flag

    labels = np.array([0, 0, 0, 1, 1, 0])
    one = [SimpleNamespace(split={"test": np.array([0, 1, 3])})]
    assert _chance_flag(labels, one, 2 / 3) == {"chance_accuracy": 2 / 3, "at_or_below_chance": True}
    assert _chance_flag(labels, one, 1.0)["at_or_below_chance"] is False
    folds = [SimpleNamespace(split={"test": np.array([0, 3])}), SimpleNamespace(split={"test": np.array([1, 2, 4, 5])})]
    assert _chance_flag(labels, folds, 0.5) == {"chance_accuracy": 4 / 6, "at_or_below_chance": True}
    assert _chance_flag(labels, [SimpleNamespace(split={"test": np.array([], dtype=int)})], 0.5) == {}


def test_explain_scores_render_and_export_pick_an_output_logodds_by_default(capsys):
    from nucleograph.cli import build_parser

    parser = build_parser()
    for argv in (["explain", "--run", "r0"], ["scores", "--run", "r0"],
                 ["render", "--run", "r0", "--image", "i", "--out", "x.png"], ["export", "--run", "r0", "--out", "d"]):
        assert parser.parse_args(argv).output == "logodds", argv
        assert parser.parse_args([*argv, "--output", "prob"]).output == "prob", argv
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--output", "probability"])
        assert "choose from 'logodds', 'prob'" in capsys.readouterr().err
    _help("explain")
    assert "(default: logodds)" in " ".join(capsys.readouterr().out.split())


def test_a_missing_output_is_explained_with_the_stored_one():
    args = argparse.Namespace(run="r0", method="occlusion", hops=1, output="logodds")
    expls = [{"method": "occlusion", "hops": 1, "output": "prob"}, {"method": "attention", "hops": None, "output": None}]
    assert cli._other_outputs(expls, args) == " (the run has probability drop scores: --output prob)"
    assert cli._other_outputs(expls, argparse.Namespace(**{**vars(args), "hops": 2})) == ""
    assert cli._other_outputs(expls, argparse.Namespace(**{**vars(args), "output": "prob"})) == ""
    # a run with no scores of the method asked for (here local evidence) names what it has
    local = argparse.Namespace(**{**vars(args), "method": "local"})
    assert cli._other_outputs(expls, local) == (" (the run has occlusion k=1, probability drop scores: --method "
                                               "occlusion --hops 1 --output prob; attention scores: --method attention)")
    assert cli._other_outputs([], local) == ""
    assert cli._explain_command(args) == "nucleograph explain --run r0 --method occlusion --hops 1 --output logodds"
    assert cli._title(args) == "occlusion k=1, log-odds drop"
    att = argparse.Namespace(run="r0", method="attention", hops=1, output="logodds")
    assert (cli._title(att), cli._explain_command(att)) == ("attention", "nucleograph explain --run r0 --method attention")
