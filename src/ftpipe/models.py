"""Finding and loading pre-trained models: local directories, s3:// prefixes and hub ids.

Weights load as safetensors only, and ``trust_remote_code`` is passed through only when the
candidate's config turns it on. S3 prefixes are downloaded once into a local cache keyed by URI and the objects' ETags.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from ftpipe.errors import ModelError, StorageError, StorageUnavailable
from ftpipe.storage import Storage, is_s3, local_path


def cache_dir() -> Path:
    """Where downloaded model prefixes are kept (``FTPIPE_CACHE``, default ``~/.cache/ftpipe``)."""
    return Path(os.environ.get("FTPIPE_CACHE") or Path.home() / ".cache" / "ftpipe")


def resolve_source(source: str, storage: Storage) -> str:
    """A path or hub id that ``from_pretrained`` accepts, downloading s3:// prefixes first.

    Raises:
        ModelError: the local directory or S3 prefix does not exist.
    """
    if is_s3(source):
        try:
            # Keyed on the objects' ETags too: a model replaced under the same prefix (a retrained base, a
            # scheduled run's new candidate) is fetched again rather than served stale.
            digest = hashlib.sha256(json.dumps([source, storage.etags(source)]).encode()).hexdigest()[:16]
            target = cache_dir() / "models" / digest
            complete = target / ".complete"
            if not complete.exists():
                storage.download_dir(source, target)
                complete.touch()
        except StorageError as error:
            kind = StorageUnavailable if error.transient else ModelError  # a retry may cure only the first
            raise kind(f"cannot fetch model {source}: {error}") from None
        return str(target)
    if is_hub_id(source):
        return source  # loading it offline fails with a ModelError from the loader
    path = local_path(source)
    if not path.is_dir():
        raise ModelError(f"model directory not found: {source}")
    return str(path)


def is_hub_id(source: str) -> bool:
    """Whether a candidate source names a model on a hub rather than a local directory or S3 prefix."""
    return not (is_s3(source) or source.startswith(("file://", "/", ".")) or local_path(source).exists())


def read_license(model_dir: str) -> str | None:
    """The ``license:`` field of a model card's YAML front matter, lower-cased, if there is one."""
    card = Path(model_dir) / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1]
    match = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front, re.MULTILINE)
    return match.group(1).strip().lower() if match else None


def load_tokenizer(source: str, *, trust_remote_code: bool = False):
    """Load a tokenizer, raising ModelError with one line when it cannot be."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for "cannot load"
        raise ModelError(f"cannot load tokenizer {source}: {_first_line(error)}") from None


def load_pretrained(auto_class, source: str, *, trust_remote_code: bool = False, **settings):
    """``auto_class.from_pretrained`` with safetensors only, raising ModelError with one line when it fails."""
    try:
        return auto_class.from_pretrained(source, use_safetensors=True, trust_remote_code=trust_remote_code, **settings)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for "cannot load"
        raise ModelError(f"cannot load model {source}: {_first_line(error)}") from None


def load_encoder(source: str, *, trust_remote_code: bool = False, auto_class: str = "AutoModel"):
    """Load the model the selection probe runs: the bare encoder (no head) unless the task asks for another class."""
    import transformers

    return load_pretrained(getattr(transformers, auto_class), source, trust_remote_code=trust_remote_code)


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def derive_first_layers(source: str, destination: str, layers: int) -> int:
    """Save a smaller model made of the first ``layers`` transformer layers of ``source``.

    Loading a checkpoint into a config with fewer hidden layers keeps exactly the first ones (the
    rest are reported unused and dropped), which works for every architecture that names its depth
    ``num_hidden_layers``. The tokenizer and the model card (for its licence) come along.

    Returns:
        The parameter count of the derived model.
    """
    import shutil

    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as error:  # noqa: BLE001
        raise ModelError(f"cannot load model config {source}: {_first_line(error)}") from None
    depth = getattr(config, "num_hidden_layers", None)
    if depth is None:
        raise ModelError(f"{source}: the config has no num_hidden_layers, so its depth cannot be cut")
    if not 1 <= layers < depth:
        raise ModelError(f"--layers must be between 1 and {depth - 1} for {source} ({depth} layers)")
    config.num_hidden_layers = layers
    model = AutoModel.from_pretrained(source, config=config, use_safetensors=True)
    if getattr(model, "pooler", None) is not None:
        # The pooler was trained on the last layer's [CLS] state; on an earlier layer's it maps every
        # text to nearly the same vector (measured on MiniLM cut to 3 layers: spread 5e-5 against 2e-2),
        # and a classification head on top of it never leaves the majority class. Dropped here, it is
        # initialised afresh when the model is fine-tuned.
        model.pooler = None
    model.save_pretrained(destination, safe_serialization=True)
    load_tokenizer(source).save_pretrained(destination)
    card = Path(source) / "README.md"
    if card.is_file():
        shutil.copyfile(card, Path(destination) / "README.md")
    return count_parameters(model)
