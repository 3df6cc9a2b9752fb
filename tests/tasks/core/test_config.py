import pytest

from tasks.core.config import ConfigError, PipelineConfig, load_config


def test_defaults_match_params_yaml():
    from tests.conftest import REPO

    assert load_config(REPO / "params.yaml") == PipelineConfig()


def test_overrides_are_typed_and_nested(tmp_path):
    cfg = load_config(None, ["pretrain.epochs=5", "pretrain.method_params.temperature=0.5", "validate.allow_duplicates=true"])
    assert cfg.pretrain.epochs == 5
    assert cfg.pretrain.method_params == {"temperature": 0.5}
    assert cfg.validate.allow_duplicates is True
    assert cfg.flat()["pretrain.epochs"] == 5


def test_view_recipe_follows_the_image_size_unless_set():
    from ssl_models.augment import recipe_for_size

    assert PipelineConfig().augment.policy(224, "simclr") == recipe_for_size(224)  # ImageNet recipe: blur on
    cfg = load_config(None, ["data.image_size=224", "augment.blur_p=0.1"])
    assert cfg.augment.policy(224, "simclr").blur_p == 0.1 and cfg.augment.policy(224, "simclr").crop_scale == (0.08, 1.0)
    assert cfg.resolved().augment.brightness == 0.8  # MLflow records the value used, not "auto"
    with pytest.raises(ConfigError, match=r"augment.blur_p: Input should be less than or equal to 1 \(or 'auto'\)"):
        load_config(None, ["augment.blur_p=2"])


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
        ("finetune.alias=latest", "finetune.alias: 'latest': MLflow reserves"),
        ("finetune.alias=v2", "finetune.alias"),
        ("finetune.alias=new one", "finetune.alias"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params\.yaml"):
        load_config(params)


def test_label_efficiency_curve_always_ends_at_all_labels():
    # 100% is where the supervised from-scratch reference comes from.
    assert load_config(None, ["evaluate.label_fractions=[0.1, 0.01]"]).evaluate.label_fractions == [0.01, 0.1, 1.0]


def test_params_yaml_is_the_defaults_written_out():
    # One source of defaults: params.yaml is generated from the config (`sslpipe generate --params`).
    from tasks.core.config import params_yaml
    from tests.conftest import REPO

    assert (REPO / "params.yaml").read_text() == params_yaml()


def test_defaults_come_from_the_science_dataclasses():
    from ssl_models.augment import ViewPolicy
    from ssl_models.finetune import FinetuneSettings
    from ssl_models.training import TrainSettings

    cfg = PipelineConfig()
    assert cfg.pretrain.epochs == TrainSettings().epochs and cfg.pretrain.batch_size == TrainSettings().batch_size
    assert cfg.augment.policy(32, "simclr") == ViewPolicy(size=32)
    assert cfg.finetune.settings(FinetuneSettings()) == FinetuneSettings()


def test_finetune_optimizer_and_lr_are_the_modality_s_unless_set():
    import dataclasses

    from ssl_models.finetune import TEXT_FINETUNE, FinetuneSettings

    images, text = FinetuneSettings(), TEXT_FINETUNE
    assert (text.optimizer, text.lr) == ("adamw", 5e-4) and (images.optimizer, images.lr) == ("sgd", 0.05)
    assert PipelineConfig().finetune.settings(text) == text
    # A key set in params is used by every modality: text's lr, warm-up and weight decay included.
    cfg = load_config(None, ["finetune.lr=0.001", "finetune.warmup_steps=3", "finetune.weight_decay=0.1", "finetune.steps=7"])
    for recipe in (images, text):
        assert cfg.finetune.settings(recipe) == dataclasses.replace(recipe, lr=0.001, warmup_steps=3, weight_decay=0.1, steps=7)
    assert load_config(None, ["finetune.optimizer=sgd"]).finetune.settings(text).optimizer == "sgd"
    with pytest.raises(ConfigError, match=r"finetune\.optimizer"):
        load_config(None, ["finetune.optimizer=adam"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("pretrain.method=simclrr", "unknown method 'simclrr'; valid methods: barlow_twins, byol"),
        (
            "pretrain.method_params={temprature: 0.5}",
            "simclr has no hyperparameter 'temprature'; valid: projection_dim, hidden_dim, temperature",
        ),
    ],
)
def test_method_and_its_hyperparameters_are_checked_at_load(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("{", r"\{")):
        load_config(None, [override])


def test_resolved_config_has_no_auto():
    for method in ("simclr", "mae", "vicreg"):
        flat = load_config(None, [f"pretrain.method={method}"]).resolved().flat()
        # compile: auto is decided during the run, from the measured step time (ssl_models/compile_plan.py), and logged
        assert flat.pop("pretrain.compile") == "auto"
        assert "auto" not in flat.values(), method
    mae = load_config(None, ["pretrain.method=mae"]).resolved().pretrain
    assert (mae.backbone, mae.optimizer, mae.lr) == ("vit_tiny", "adamw", 1.5e-3)


def test_processes_resolve_to_the_count_used(monkeypatch):
    assert load_config(None).resolved().flat()["pretrain.processes"] == 1
    assert load_config(None, ["pretrain.processes=2"]).resolved().flat()["pretrain.processes"] == 2
    # auto: one per GPU; on the CPU one process already uses every core
    assert load_config(None, ["pretrain.processes=auto", "pretrain.device=cpu"]).resolved().pretrain.processes == 1
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match=r"pretrain\.processes"):
            load_config(None, [f"pretrain.processes={bad}"])
    monkeypatch.setenv("RANK", "1")  # under torchrun: its count
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert load_config(None).resolved().pretrain.processes == 4


@pytest.mark.parametrize("override", ["pretrain.method_params={a: [1", "data.unlabeled=*alias", "pretrain.lr=: x"])
def test_yaml_error_in_an_override_is_a_config_error(override):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, [override])


def test_missing_params_file_given_explicitly_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such parameter file"):
        load_config(tmp_path / "nope.yaml", missing_ok=False)
    assert load_config(tmp_path / "nope.yaml") == PipelineConfig()  # the default file missing: defaults


def test_params_file_that_is_not_a_mapping(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(params)


def test_the_method_must_match_the_modality_of_the_data():
    from tests.conftest import SAMPLE

    text = [f"data.unlabeled={SAMPLE / 'news.csv.gz'}", f"data.labeled={SAMPLE / 'news_labeled.csv.gz'}"]
    with pytest.raises(ConfigError, match=r"is text, but pretrain.method=simclr trains on images: set pretrain.method=mlm"):
        load_config(None, text)
    with pytest.raises(
        ConfigError, match=r"pretrain.method=mlm trains on text, but data.unlabeled=.*unlabeled.tar.gz is not a text source"
    ):
        load_config(None, [f"data.unlabeled={SAMPLE / 'unlabeled.tar.gz'}", "pretrain.method=mlm"])
    with pytest.raises(ConfigError, match=r"data.labeled=.*labeled.tar.gz is not text"):
        load_config(None, [*text[:1], f"data.labeled={SAMPLE / 'labeled.tar.gz'}", "pretrain.method=mlm"])
    cfg = load_config(None, [*text, "pretrain.method=mlm", "text.dim=32", "pretrain.method_params={mask_prob: 0.2, whole_word: true}"])
    assert cfg.modality() == "text" and cfg.model_name("text") == "ssl-text-encoder" and cfg.model_name("image") == "ssl-encoder"
    settings = cfg.text.settings(cfg.pretrain.seed, cfg.pretrain.method_params)
    assert (settings.dim, settings.mask_prob, settings.whole_word, settings.method_params) == (32, 0.2, True, {})
    assert cfg.resolved().pretrain.backbone == "text_transformer"


def test_local_crops_default_to_the_methods_and_are_refused_where_unused():
    cfg = load_config(None, ["data.image_size=224"])
    views = cfg.views()
    assert views.local_crops == 0 and views.local_size == 96  # simclr draws none unless asked
    assert cfg.resolved().augment.local_crops == 0 and cfg.resolved().augment.local_crop_size == 96
    with pytest.raises(ConfigError, match="method 'rotation' does not use local crops"):
        load_config(None, ["pretrain.method=rotation", "augment.local_crops=2"])
