import pytest

from tasks.config import ConfigError, PipelineConfig, load_config


def test_defaults_match_params_yaml():
    from tests.conftest import REPO

    assert load_config(REPO / "params.yaml") == PipelineConfig()


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(None, ["pretrain.epochs=5", "pretrain.method_params.temperature=0.5", "validate.allow_duplicates=true"])
    assert cfg.pretrain.epochs == 5
    assert cfg.pretrain.method_params == {"temperature": 0.5}
    assert cfg.validate.allow_duplicates is True
    assert cfg.flat()["pretrain.epochs"] == 5


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("pretrain.epochz=5", "pretrain.epochz"),
        ("pretrain.epochs=-1", "pretrain.epochs"),
        ("pretrain.epochs", "KEY=VALUE"),
        ("register.alias.x=1", "register.alias"),
        ("evaluate.label_fractions=[0.1, 2]", "evaluate.label_fractions"),
        ("register.min_improvement=-0.1", "register.min_improvement"),
        ("finetune.label_fraction=0", "finetune.label_fraction"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="params.yaml"):
        load_config(params)


def test_label_efficiency_curve_always_ends_at_all_labels():
    # 100% is where the supervised from-scratch reference comes from.
    assert load_config(None, ["evaluate.label_fractions=[0.1, 0.01]"]).evaluate.label_fractions == [0.01, 0.1, 1.0]
