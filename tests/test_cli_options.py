"""The command line's options and terminal output, in this process: every configuration field has its
flag, derived from its declaration (a field added gets its flag and help without editing the CLI);
flags override a configuration file; help shows no ``<bool>`` placeholder; the metrics table shows
every value whole at any width."""
import dataclasses
from typing import Annotated, Literal

import pandas as pd
import pytest

def test_every_configuration_field_has_a_run_flag_that_is_none_when_left_out():
    import dataclasses

    import typer.main

    from flows.cli import app
    from musc.inputs.config import MuscConfig
    options = {param.name: param for param in typer.main.get_command(app).commands["run"].params}
    for field in dataclasses.fields(MuscConfig):
        assert field.name in options, f"musc run has no flag for the configuration field {field.name}"
        assert options[field.name].opts == [f"--{field.name.replace('_', '-')}"]
        assert options[field.name].default is None, field.name  # left out: --config's value stays


def test_run_flags_override_the_config_file_and_flags_left_out_keep_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows import cli, terminal
    from musc.inputs.config import ConfigError, MuscConfig
    (tmp_path / "data/cat/test/good").mkdir(parents=True)
    (tmp_path / "run.yaml").write_text("seed: 3\ntopmin_max: 0.5\nlayers: [1, 2]\n")
    real, built = cli.run_config, []

    def build_then_stop(config_file, flags):
        built.append(real(config_file, flags))
        raise ConfigError("stopped before any work")
    monkeypatch.setattr(cli, "run_config", build_then_stop)
    monkeypatch.setattr(terminal, "prefect_environment", lambda: None)  # this process's environment stays
    result = CliRunner().invoke(cli.app, ["run", "--dataset", "mvtec_ad", "--root", str(tmp_path / "data"),
                                          "--config", str(tmp_path / "run.yaml"), "--seed", "7", "--r-list", "1,3",
                                          "--topmin-min", "0.1", "--aligned-radius", "2", "--quick-gelu", "false"])
    assert result.exit_code == 2 and "error: stopped before any work" in result.output, result.output
    [cfg] = built
    assert (cfg.seed, cfg.r_list, cfg.topmin_min, cfg.aligned_radius, cfg.quick_gelu) == (7, (1, 3), 0.1, 2, "false")
    assert (cfg.topmin_max, cfg.layers) == (0.5, (1, 2))  # in the file, no flag
    assert (cfg.backbone, cfg.threshold) == (MuscConfig().backbone, None)  # neither


def test_help_shows_no_bool_placeholder_for_any_flag():
    """Every command's --help as a person reads it: on/off flags (``--verbose``, ``--debug``,
    ``--help`` itself) without a ``<bool>`` value, and every configuration field explained."""
    from typer.testing import CliRunner

    from flows.cli import app
    runner = CliRunner()
    for command in (["--help"], ["run", "--help"], ["demo", "--help"], ["pool", "add", "--help"],
                    ["score-new", "--help"], ["review", "--help"], ["clean", "--help"]):
        shown = runner.invoke(app, command, env={"COLUMNS": "120"}, terminal_width=120)
        assert shown.exit_code == 0, (command, shown.output)
        assert "<bool>" not in shown.output, (command, shown.output)
    assert "--reference" in runner.invoke(app, ["run", "--help"], terminal_width=120).output


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_the_metrics_table_shows_every_value_whole_at_any_terminal_width(width, tmp_path, monkeypatch, capsys):
    """One table where it fits; in a narrower terminal, the image-level metrics, then the pixel-level
    ones, in as many tables as it takes: never a value cut or folded, never a line past the width."""
    from flows.metrics_table import print_metrics
    from musc.method.metrics import METRIC_NAMES
    from musc.outputs.ui_content import SHORT_NAMES
    values = {"screw_bag": [100.0, 99.125, 98.5, 97.0, 96.25, 95.0, 94.5, 93.75], "fabric": [90.0 + i for i in range(8)],
              "mean": [80.0 + i for i in range(8)]}
    pd.DataFrame([dict(zip(METRIC_NAMES, v)) for v in values.values()],
                 index=pd.Index(list(values), name="category")).to_csv(tmp_path / "metrics.csv")
    outcome = {"flagged": 108, "images": 160, "threshold": 0.1, "threshold_rule": "F1-optimal on the labels",
               "metrics": {"image_auroc": 1.0}, "outputs": str(tmp_path)}
    monkeypatch.setenv("COLUMNS", str(width))
    print_metrics({"table": str(tmp_path / "metrics.csv"), "report": "report.html",
                    "categories": {"screw_bag": outcome, "fabric": {**outcome, "flagged": 11, "images": 26}}})
    lines = capsys.readouterr().out.splitlines()
    lines = lines[:next(i for i, line in enumerate(lines) if line.startswith("screw_bag: "))]  # the tables
    assert max(len(line) for line in lines) <= width
    headers = [name for line in lines if line.split()[:2] == ["category", "flagged"] for name in line.split()[2:]]
    assert headers == [SHORT_NAMES[name] for name in METRIC_NAMES]
    tables = sum(line.split()[:2] == ["category", "flagged"] for line in lines)
    assert (tables == 1) if width >= 100 else (tables >= 2)
    for category, expected in values.items():
        shown = [word for line in lines if line.split()[:1] == [category] for word in line.split()[1:]
                 if word[0].isdigit() and "." in word]
        assert shown == [f"{value:.2f}" for value in expected], (category, lines)


def test_a_field_declared_once_gets_its_flag_help_choices_and_default():
    """A settings class declares a field once (type, default, bounds, choices, help); its option
    comes from that declaration alone, and the value is checked by it (one line naming the field)."""
    import typer
    from typer.testing import CliRunner

    from flows.options import Command, options_of
    from musc.inputs.values import ConfigError, about, check_fields

    @dataclasses.dataclass(frozen=True)
    class Settings:
        sharpness: Annotated[int, about("How sharp the new thing is.", ge=1, le=9)] = 3
        mode: Annotated[Literal["fast", "exact"], about("How the new thing works.")] = "exact"

        def __post_init__(self):
            check_fields(self)
    app, seen = typer.Typer(), []

    @app.command(cls=Command)
    @options_of(Settings, "New settings")
    def go(**values):
        seen.append(Settings(**{k: v for k, v in values.items() if v is not None}))
    shown = " ".join(CliRunner().invoke(app, ["--help"], terminal_width=200, env={"COLUMNS": "200"}).output.split())
    assert "--sharpness" in shown and "How sharp the new thing is. Default: 3." in shown, shown
    assert "--mode" in shown and "One of: fast, exact. Default: exact." in shown
    assert CliRunner().invoke(app, ["--sharpness", "5"]).exit_code == 0 and seen[-1] == Settings(5, "exact")
    with pytest.raises(ConfigError, match="^sharpness: must be <= 9, got 12$"):
        Settings(sharpness=12)
    with pytest.raises(ConfigError, match="^mode: expected 'fast' or 'exact', got 'slow'$"):
        Settings(mode="slow")
