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
