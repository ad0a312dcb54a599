"""--set takes a word as typed where the setting takes words: YAML reads a bare `no`, `off`,
`yes` or `on` as a boolean, which a string choice such as launch.mixed_precision then refused."""

from __future__ import annotations

import pytest
import yaml

from lab_helpers import invoke, make_lab
from minimind.config import parse_set

MODEL_FIELDS = {"preset": {"type": "str", "choices": ["original", "memory"]}, "dim": {"type": "int"}}


@pytest.mark.parametrize("item, expected", [
    ("launch.mixed_precision=no", ("launch.mixed_precision", "no")),
    ("mixed_precision=no", ("mixed_precision", "no")),
    ("swanlab.mode=off", ("swanlab.mode", "off")),
    ("data.pretrain=on", ("data.pretrain", "on")),
    ("data.knowledge=yes", ("data.knowledge", "yes")),
    ("guardrails.repetition_rate.action=off", ("guardrails.repetition_rate.action", "off")),
    # numbers and booleans stay what YAML reads where the setting takes them
    ("launch.cpu=yes", ("launch.cpu", True)),
    ("launch.compile=off", ("launch.compile", False)),
    ("train.batch_size=8", ("train.batch_size", 8)),
    ("data.knowledge=null", ("data.knowledge", None)),
    ("launch.gpus=[0, 1]", ("launch.gpus", [0, 1])),
    ("guardrails.repetition_rate.safe=0.4", ("guardrails.repetition_rate.safe", 0.4)),
    ("dim=64", ("dim", 64)),
])
def test_parse_set_takes_words_as_typed(item, expected):
    assert parse_set(item, MODEL_FIELDS) == expected


def test_new_with_mixed_precision_no(tmp_path, bundled_data):
    lab = make_lab(tmp_path / "lab", bundled_data)
    result = invoke(lab, "new", "0.1.0", "--goal", "fp32 baseline", "--hypothesis", "fp32 trains as well",
                    "--set", "launch.mixed_precision=no", "--no-launch")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((lab.run_dir("0.1.0") / "config.yaml").read_text())
    assert config["launch"]["mixed_precision"] == "no"
    # a word the choice does not hold is still refused, with the word named
    result = invoke(lab, "new", "0.1.1", "--goal", "g", "--hypothesis", "h", "--set", "launch.mixed_precision=off")
    assert result.exit_code == 2 and "got 'off'" in result.output, result.output
