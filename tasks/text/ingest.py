"""The text part of ingest: a BPE tokenizer trained on the accepted documents, and token-id shards."""

from __future__ import annotations

from tasks.core.atomic import staged_dir, write_json
from tasks.core.context import StageContext
from tasks.core.lineage import dvc_hash
from tasks.core.results import Prepared, Validated
from tasks.image.sources import SourceError
from tasks.text.tokens import ingest_text


def ingest(ctx: StageContext, validated: Validated) -> Prepared:
    """Tokenizer + token shards from the accepted documents; the labeled set encoded with it."""
    layout, cfg = ctx.layout, ctx.cfg
    if not validated.success:
        raise SourceError("the data failed validation; nothing is ingested (see `sslpipe validate`):\n" + "\n".join(validated.summaries))
    settings = cfg.text.settings(cfg.pretrain.seed, cfg.pretrain.method_params)
    with staged_dir(layout.prepared) as staging:
        counts = ingest_text(
            layout.source(cfg.data.unlabeled), layout.source(cfg.data.labeled), layout.validation, staging / "unlabeled", staging / "labeled",
            settings, cfg.data.test_fraction, cfg.data.text_columns, cfg.data.label_column,
        )  # fmt: skip
        # What Prepared.load reads back, as for images.
        write_json(staging / "unlabeled" / "counts.json", {"unlabeled": counts["unlabeled"]})
        write_json(staging / "labeled" / "counts.json", {k.removeprefix("labeled_"): v for k, v in counts.items() if k.startswith("labeled_")})
    ctx.tracker.log_metrics({f"documents/{key}": n for key, n in counts.items()})
    return Prepared(str(layout.unlabeled), str(layout.labeled), counts, dvc_hash(layout.unlabeled), dvc_hash(layout.labeled))

