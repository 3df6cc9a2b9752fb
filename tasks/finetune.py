"""Finetune stages: a labeled folder + the champion encoder -> a registered classifier.

    resolve   find ``models:/<register.model_name>@<finetune.encoder_alias>`` and download it
    prepare   validate the folder with the pipeline's GX checkpoint, then decode the files it
              accepted (the pipeline's ingest_labeled)             reports/finetune/validation/, data/prepared/finetune/
    finetune  fine-tune the encoder + a linear head on ``finetune.label_fraction`` of the train
              labels; to show what pretraining buys, also fine-tune it and train the same
              architecture from scratch on ``finetune.compare_fraction``. Opens its own MLflow
              run (experiment ``finetune.experiment``) tagged with the encoder version.
                                                                   models/classifier/, reports/finetune/metrics.json
    register  the classifier as an MLflow LoggedModel, a new version of ``ssl-classifier`` with
              ``finetune.alias``, a plain-text description and a link to the encoder version

What the MLflow run shows: a description whose first sentence is the result (``mlflow.note.content``),
the labeled folder as its dataset input (digest: its DVC hash), the recipe as params, the
accuracies as metrics, and ``plots/per_class_accuracy.png`` + ``plots/confusion_matrix.png``
of the classifier on the test split. Each step logs a line (the flow sends them to the Prefect run).

Everything is weights + JSON config: the encoder is read with ``torch.load(weights_only=True)``,
the classifier is written the same way. No pickle.

**Text.** The modality follows ``finetune.data``: labeled text (a .csv/.csv.gz with
``data.label_column``, a .jsonl with ``label``, or ``<class>/*.txt`` folders) fine-tunes
``models:/<register.text_model_name>@<finetune.encoder_alias>``: the documents are validated
by text validation, encoded with the encoder's own tokenizer, and the classifier (the encoder
+ a linear head, trained by the same loop with text's recipe, AdamW: ``ssl_models.finetune.TEXT_FINETUNE``)
registers as ``finetune.text_model_name`` with the tokenizer beside it, a pyfunc taking strings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ssl_models.encoder import CONFIG_FILE, Classifier, load_encoder
from ssl_models.evaluation import extract_features
from ssl_models.finetune import (
    TEXT_FINETUNE,
    Augment,
    Features,
    FinetuneSettings,
    confusion_matrix,
    finetune_accuracy,
    image_augment,
    load_classifier,
    save_classifier,
    stratified_subset,
)
from tasks.core.atomic import staged_dir, write_json
from tasks.core.config import PipelineConfig
from tasks.core.layout import Layout
from tasks.core.lineage import dvc_hash, git_commit
from tasks.core.plots import confusion_matrix_plot, per_class_accuracy_plot
from tasks.image.checks import ImageChecks
from tasks.image.prepared import load_classes, load_labeled, write_labeled
from tasks.image.sources import SourceError
from tasks.registry.models import log_classifier_model, weights_dir
from tasks.registry.promotion import current_champion, registry_lock
from tasks.registry.tracking import Tracker, log_training_dataset, model_version_url, tracking_uri, ui_base, use_store
from tasks.validation.source_check import run_checks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderRef:
    """The registered encoder a fine-tuning starts from, pinned to its version."""

    name: str
    version: str
    alias: str
    run_id: str
    local_dir: str  # its weights.pt + config.json (text: + tokenizer.json), downloaded
    image_size: int  # 0 for a text encoder
    modality: str = "image"

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def finetune_modality(layout: Layout, cfg: PipelineConfig) -> str:
    """The modality of ``finetune.data``: "text" when it is labeled text, else "image"."""
    return cfg.modality(layout.root, cfg.finetune.data)


def no_encoder_message(cfg: PipelineConfig, modality: str = "image") -> str:
    name, alias = cfg.model_name(modality), cfg.finetune.encoder_alias
    return f"models:/{name}@{alias} does not exist: run the pipeline first (`sslpipe run`), or set one with `sslpipe promote VERSION`"


def resolve_encoder_stage(layout: Layout, cfg: PipelineConfig) -> EncoderRef | None:
    """Pin ``@encoder_alias`` to a version and download it; None when there is no such alias."""
    import mlflow

    use_store(layout.root, cfg.finetune.experiment)
    modality = finetune_modality(layout, cfg)
    name, alias = cfg.model_name(modality), cfg.finetune.encoder_alias
    version = current_champion(mlflow.MlflowClient(), name, alias)
    if version is None:
        return None
    target = layout.models / "base_encoder"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    # Download the pinned version, not the alias: the alias may move while we train.
    local = weights_dir(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version.version}", dst_path=str(target)))
    image_size = 0 if modality == "text" else int(json.loads((Path(local) / CONFIG_FILE).read_text()).get("image_size", 32))
    log.info("fine-tuning starts from %s version %s (@%s, MLflow run %s)", name, version.version, alias, version.run_id)
    return EncoderRef(name, str(version.version), alias, version.run_id or "", str(local), image_size, modality)


@dataclass(frozen=True)
class Prepared:
    ok: bool
    message: str  # the validation summary, or what is wrong with the folder
    counts: dict[str, int] = field(default_factory=dict)  # images per split


def finetune_prepare_stage(layout: Layout, cfg: PipelineConfig, encoder: EncoderRef) -> Prepared:
    """Validate ``finetune.data`` (the pipeline's GX checkpoint), then decode what it accepted at
    the encoder's own input size (text: encode it with the encoder's tokenizer). Never raises on
    bad data: a bad folder is a result, which the flow turns into a Failed run with this message
    (a raise in a task would print a traceback)."""
    validation = layout.finetune_reports / "validation"
    source = layout.source(cfg.finetune.data)
    if encoder.modality == "text":
        return _prepare_text(layout, cfg, encoder, source, validation)
    image_size = encoder.image_size
    report, _ = run_checks(ImageChecks(cfg.validate, image_size, downloads=layout.downloads, labeled=True), source, "finetune", validation)
    if not report.success:
        return _prepared(Prepared(False, report.summary()))
    try:
        table = validation / "finetune_table.csv"
        with staged_dir(layout.finetune_data) as staging:
            counts = write_labeled(source, table, staging, image_size, cfg.data.test_fraction, layout.downloads)
    except SourceError as err:  # e.g. the files changed since validation
        return _prepared(Prepared(False, str(err)))
    return _prepared(Prepared(True, report.summary(), counts), "images", image_size)


def _prepared(prepared: Prepared, unit: str = "", image_size: int = 0) -> Prepared:
    """Say what preparing gave (the flow run's logs show it), and return it."""
    if not prepared.ok:
        log.error("%s", prepared.message)
        return prepared
    log.info("%s", prepared.message)
    size = f" at {image_size}px" if image_size else ""
    log.info("prepared %s for fine-tuning%s", ", ".join(f"{n} {split} {unit}" for split, n in prepared.counts.items()), size)
    return prepared


def _prepare_text(layout: Layout, cfg: PipelineConfig, encoder: EncoderRef, source: str, validation: Path) -> Prepared:
    from ssl_models.text import TOKENIZER_FILE
    from tasks.text.checks import DocumentChecks
    from tasks.text.tokens import ingest_text_labeled

    d = cfg.data
    try:  # no drift reference: a fine-tuning set is judged on its own
        checks = DocumentChecks(cfg.validate, labeled=True, text_columns=d.text_columns, label_column=d.label_column)
        report, _ = run_checks(checks, source, "finetune", validation)
        if not report.success:
            return _prepared(Prepared(False, report.summary()))
        tokenizer, table = Path(encoder.local_dir) / TOKENIZER_FILE, validation / "finetune_table.csv"
        counts = ingest_text_labeled(source, layout.finetune_data, tokenizer, table, test_fraction=d.test_fraction,
                                     text_columns=d.text_columns, label_column=d.label_column)  # fmt: skip
    except SourceError as err:
        return _prepared(Prepared(False, str(err)))
    return _prepared(Prepared(True, report.summary(), counts), "documents")


@dataclass(frozen=True)
class FinetuneData:
    """What fine-tuning needs of the encoder's modality."""

    train: tuple  # (rows, labels): images or token ids
    test: tuple
    classes: list[str]
    base: nn.Module  # the registered encoder, downloaded
    settings: FinetuneSettings  # the modality's recipe with the finetune.* keys set in params
    features: Features  # how a model's outputs over a set are read (the test accuracy)
    augment: Augment | None  # what a training batch becomes on the device
    unit: str  # "images", "documents"
    beside: tuple[str, ...] = ()  # files of the encoder's folder the classifier needs too


def finetune_data(layout: Layout, cfg: PipelineConfig, encoder: EncoderRef) -> FinetuneData:
    """data/prepared/finetune/ and the encoder, as the modality of ``encoder`` has them."""
    if encoder.modality == "text":
        from ssl_models.text import TOKENIZER_FILE, load_text_encoder, text_features
        from tasks.text.tokens import load_labeled_tokens

        tokens, classes = load_labeled_tokens(layout.finetune_data), json.loads((layout.finetune_data / "classes.json").read_text())
        train, test = (tokens["train_tokens"], tokens["train_labels"]), (tokens["test_tokens"], tokens["test_labels"])
        settings = cfg.finetune.settings(TEXT_FINETUNE)
        return FinetuneData(
            train, test, classes, load_text_encoder(encoder.local_dir), settings, text_features, None, "documents", (TOKENIZER_FILE,)
        )
    images = load_labeled(layout.finetune_data)
    train, test = (images["train_images"], images["train_labels"]), (images["test_images"], images["test_labels"])
    settings = cfg.finetune.settings(FinetuneSettings())
    return FinetuneData(
        train,
        test,
        load_classes(layout.finetune_data),
        load_encoder(encoder.local_dir),
        settings,
        extract_features,
        image_augment(settings),
        "images",
    )


def finetune_stage(layout: Layout, cfg: PipelineConfig, encoder: EncoderRef, tracker: Tracker) -> dict:
    """Fine-tune, compare with training from scratch, save the classifier, log to ``tracker``'s run."""
    f = cfg.finetune
    data = finetune_data(layout, cfg, encoder)
    train, test, classes, settings = data.train, data.test, data.classes, data.settings

    def fine_tune(fraction: float, random_init: bool = False) -> tuple[float, Classifier]:
        device = torch.device(f.device)
        return finetune_accuracy(
            data.base, train, test, len(classes), settings, fraction, random_init, device, features=data.features, augment=data.augment
        )

    train_labels = len(stratified_subset(train[1], f.label_fraction, settings.seed))
    share = f"{train_labels} labels ({f.label_fraction:.0%})"
    log.info("fine-tuning %s + a linear head on %s, %d steps", encoder.uri, share, settings.steps)
    accuracy, classifier = fine_tune(f.label_fraction)
    matrix = confusion_matrix(classifier, test[0], test[1], len(classes), data.features, torch.device(f.device))
    totals = matrix.sum(1).clamp(min=1)
    metrics: dict = {
        "test_acc": accuracy,
        "unit": data.unit,
        "label_fraction": f.label_fraction,
        "train_labels": train_labels,
        f"train_{data.unit}": len(train[1]),
        f"test_{data.unit}": len(test[1]),
        "per_class_acc": {name: (matrix[i, i] / totals[i]).item() for i, name in enumerate(classes)},
        "confusion_matrix": {"classes": classes, "rows_true_columns_predicted": matrix.tolist()},
    }
    log.info("fine-tuned on %d labels: test accuracy %.3f on %d %s", train_labels, accuracy, len(test[1]), data.unit)
    if f.compare_fraction is not None:
        same = f.compare_fraction == f.label_fraction
        metrics["compare"] = {
            "fraction": f.compare_fraction,
            "train_labels": len(stratified_subset(train[1], f.compare_fraction, settings.seed)),
            "ssl_finetune_acc": accuracy if same else fine_tune(f.compare_fraction)[0],
            "scratch_acc": fine_tune(f.compare_fraction, random_init=True)[0],
        }
        c = metrics["compare"]
        log.info(
            "at %g%% of the labels (%d): fine-tuned %.3f vs from scratch %.3f",
            c["fraction"] * 100, c["train_labels"], c["ssl_finetune_acc"], c["scratch_acc"],
        )  # fmt: skip
    reports = layout.finetune_reports
    what = f"{len(test[1])} test {data.unit}, classifier fine-tuned on {train_labels} labels"
    plots = [
        per_class_accuracy_plot(classes, matrix, reports / "per_class_accuracy.png", f"Test accuracy per class\n({what})"),
        confusion_matrix_plot(classes, matrix, reports / "confusion_matrix.png", f"Confusion matrix\n({what})"),
    ]
    with staged_dir(layout.classifier) as staging:
        save_classifier(classifier, staging, extra={"classes": classes, "encoder_uri": encoder.uri})
        for name in data.beside:  # text: the tokenizer, so that the classifier takes strings on its own
            shutil.copyfile(Path(encoder.local_dir) / name, staging / name)
    return _record(layout, cfg, encoder, tracker, metrics, settings, plots)


def _record(
    layout: Layout, cfg: PipelineConfig, encoder: EncoderRef, tracker: Tracker, metrics: dict, settings: FinetuneSettings, plots: list[Path]
) -> dict:
    """reports/finetune/metrics.json, and the run's tags (the encoder version, data, code), params (the
    recipe as used: the modality's where finetune.* is null), metrics, dataset input, plots and description."""
    f = cfg.finetune
    metrics_file = write_json(layout.finetune_reports / "metrics.json", metrics)

    data_version = dvc_hash(layout.finetune_data)
    encoder_url = model_version_url(ui_base(tracking_uri(layout.root)), encoder.name, encoder.version)
    tags = {
        "encoder_model": encoder.name,
        "encoder_version": encoder.version,
        "encoder_alias": encoder.alias,
        "encoder_uri": encoder.uri,
        "encoder_run_id": encoder.run_id,
        "encoder_url": encoder_url,  # the encoder version's page in the MLflow UI
        "data_version": data_version,
        "git_commit": git_commit(layout.root),
        "modality": encoder.modality,
    }
    tracker.set_tags(tags | {"mlflow.note.content": run_description(metrics, encoder)})
    # The labeled folder as the run's dataset (its DVC hash the digest, as pretraining's data); both splits.
    unit = metrics["unit"]
    train, test = metrics[f"train_{unit}"], metrics[f"test_{unit}"]
    profile = {"train": train, "test": test, "classes": len(metrics["per_class_acc"])}
    log_training_dataset("labeled", data_version, f.data, train + test, tracker.run_id, profile=profile)
    params = {f"finetune.{k}": v for k, v in (f.model_dump() | dataclasses.asdict(settings)).items()}
    tracker.log_params(params | {"data.test_fraction": cfg.data.test_fraction})
    tracker.log_metrics({"test_acc": metrics["test_acc"], "train_labels": metrics["train_labels"]})
    if "compare" in metrics:
        tracker.log_metrics({f"compare/{k}": v for k, v in metrics["compare"].items()})
    tracker.log_artifact(metrics_file)
    for report in sorted((layout.finetune_reports / "validation").glob("*.json")):
        tracker.log_artifact(report, "validation")
    for plot in plots:
        tracker.log_artifact(plot, "plots")
    return metrics | {"run_id": tracker.run_id, "encoder_uri": encoder.uri, "tags": tags}


def register_classifier_stage(layout: Layout, cfg: PipelineConfig, finetuned: dict) -> int:
    """Log models/classifier/ to the finetune run and register a new version of ``finetune.model_name``."""
    import mlflow

    f = cfg.finetune
    tags = finetuned["tags"] | {"test_acc": f"{finetuned['test_acc']:.4f}", "label_fraction": str(finetuned["label_fraction"])}
    use_store(layout.root, f.experiment)
    if tags["modality"] == "text":
        from tasks.registry.models import log_text_classifier_model
        from tasks.text.tokens import load_labeled_texts

        name = f.text_model_name
        example = load_labeled_texts(layout.finetune_data)["test_texts"][:2]
        model_id = log_text_classifier_model(layout.classifier, name, finetuned["run_id"], tags, example)
    else:
        name = f.model_name
        model_id = log_classifier_model(layout.classifier, name, finetuned["run_id"], tags)
    client = mlflow.MlflowClient()
    with registry_lock(layout.root):  # the registry's version numbering, as in the pipeline
        version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
        client.set_registered_model_alias(name, f.alias, version.version)
    if not client.get_registered_model(name).description:  # a description written in the UI stays
        client.update_registered_model(name, description=model_description(name, f.alias))
    client.update_model_version(name, version.version, description=version_description(finetuned, name, version.version))
    client.set_tag(finetuned["run_id"], "registered_version", version.version)
    note = run_description(finetuned, None, name, version.version, f.alias)
    client.set_tag(finetuned["run_id"], "mlflow.note.content", note)
    log.info("registered %s version %s (@%s), fine-tuned from %s", name, version.version, f.alias, tags["encoder_uri"])
    record = {"model_name": name, "version": int(version.version), "alias": f.alias, "run_id": finetuned["run_id"],
              "encoder_uri": tags["encoder_uri"]}  # fmt: skip
    write_json(layout.finetune_reports / "registered.json", record)
    return int(version.version)


def _encoder_words(result: dict) -> str:
    """``ssl-encoder version 1 (@champion)``, from the run's tags."""
    tags = result["tags"]
    return f"{tags['encoder_model']} version {tags['encoder_version']} (@{tags['encoder_alias']})"


def _compare_sentence(result: dict) -> str:
    if "compare" not in result:
        return ""
    c = result["compare"]
    return (
        f"At {c['fraction'] * 100:g}% of the labels ({c['train_labels']}): fine-tuned {c['ssl_finetune_acc']:.3f}, "
        f"the same architecture from scratch {c['scratch_acc']:.3f}."
    )


def run_description(
    result: dict, encoder: EncoderRef | None = None, model_name: str | None = None, version: str | int | None = None, alias: str = ""
) -> str:
    """The run's description (``mlflow.note.content``): the first sentence, all that the UI shows
    collapsed, is the result in plain words; then the comparison with training from scratch
    and the classes. ``encoder``: while the result has no tags yet; ``version``: once registered."""
    source = _encoder_words(result) if encoder is None else f"{encoder.name} version {encoder.version} (@{encoder.alias})"
    unit = result["unit"]
    first = f"Fine-tuned {source} on {result['train_labels']} labels: test accuracy {result['test_acc']:.3f} "
    first += f"on {result[f'test_{unit}']} {unit}"
    first += f", registered as {model_name} version {version} (@{alias})." if version is not None else "."
    per_class = ", ".join(f"{name} {acc:.3f}" for name, acc in result["per_class_acc"].items())
    return "\n\n".join(part for part in (first, _compare_sentence(result), f"Per class: {per_class}.") if part)


def version_description(result: dict, model_name: str, version: str | int) -> str:
    """A classifier version's description, plain text (the registry's table shows its first
    characters as they are): what it is, how good, and the encoder version it came from, linked."""
    tags = result["tags"]
    lines = [
        f"Classifier fine-tuned from {_encoder_words(result)} on {result['train_labels']} labels: "
        f"test accuracy {result['test_acc']:.3f}. {_compare_sentence(result)}".rstrip(),
        "",
        f"Encoder: {tags['encoder_uri']}, {tags['encoder_url']}",
        f"Classes: {', '.join(result['per_class_acc'])}",
        f"Data version: {tags['data_version']}",
        f"MLflow run: {result['run_id']}",
        f"Load it: tasks.finetune.load_registered_classifier('models:/{model_name}/{version}')",
    ]
    return "\n".join(lines)


def model_description(name: str, alias: str) -> str:
    return (
        f"Classifiers fine-tuned by `sslpipe finetune` from a registered self-supervised encoder (its version: the "
        f"encoder_uri and encoder_url tags, and each version's description). The newest version gets @{alias}. "
        f"Load one with tasks.finetune.load_registered_classifier('models:/{name}@{alias}')."
    )


def load_registered_classifier(
    uri: str = "models:/ssl-classifier/latest", root: Path | None = None, experiment: str = "ssl-finetune"
) -> Classifier:
    """Download a registered classifier and rebuild it, weights only. Its config.json holds the class names."""
    import mlflow

    use_store(root or Path.cwd(), experiment)
    return load_classifier(weights_dir(mlflow.artifacts.download_artifacts(artifact_uri=uri)))
