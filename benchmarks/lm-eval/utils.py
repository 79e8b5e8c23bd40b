"""The icv_facts_mc task's data: facts_mc.jsonl beside this file, read without the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("facts_mc.jsonl")


def load_facts(**_options: Any) -> Any:
    """A DatasetDict with the one split ``test`` (lm-eval passes its metadata as keywords).

    Through datasets' json loader, with the file's path made here: a data_files path in the
    YAML would be read from the working folder, not from beside the YAML.
    """
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(DATA)})
