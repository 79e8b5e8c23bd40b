"""Build the tiny model of each family the way vLLM's worker does (no engine, no weights) and
report, as JSON in the file named first, its modules and the modules icv's vLLM plugin steers at each site.

Run as a script in its own process (``test_vllm_sites.py`` does): it sets up vLLM's
single-rank process groups, which a test process that later starts engines must not hold.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tiny.py

import torch  # noqa: E402
from tiny import _TOKENS, FAMILIES  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402


def tiny_folder(root: str, family: str) -> str:
    config = AutoConfig.for_model(family, **{**FAMILIES[family], **_TOKENS})
    config.architectures = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    folder = os.path.join(root, family)
    config.save_pretrained(folder)
    return folder


def main(out: str, families: list[str]) -> None:
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.models import registry
    from vllm.utils.torch_utils import set_default_torch_dtype

    from icv.serving.vllm.sites import site_modules

    # vLLM inspects each model class in a fresh interpreter (to keep CUDA out of the caller);
    # on a CPU that costs seconds per family and nothing is gained: inspect here.
    registry._run_in_subprocess = lambda fn: fn()
    with set_current_vllm_config(VllmConfig()):  # no model config: the expert-parallel group too
        init_distributed_environment(
            world_size=1, rank=0, local_rank=0, backend="gloo", distributed_init_method="tcp://127.0.0.1:0"
        )
        initialize_model_parallel(1, 1)
    report = {}
    with tempfile.TemporaryDirectory() as root:
        for family in families:
            args = EngineArgs(
                model=tiny_folder(root, family),
                load_format="dummy",
                skip_tokenizer_init=True,
                dtype="float32",
                max_model_len=128,
                enforce_eager=True,
            )
            vllm_config = args.create_engine_config()
            with set_current_vllm_config(vllm_config):
                with set_default_torch_dtype(vllm_config.model_config.dtype), torch.device("cpu"):
                    model = get_model_loader(vllm_config.load_config).create_model(
                        vllm_config=vllm_config, model_config=vllm_config.model_config
                    )
            names = {id(module): name for name, module in model.named_modules()}
            report[family] = {
                "model": type(model).__name__,
                "modules": [[name, type(module).__name__] for name, module in model.named_modules()],
                "sites": {
                    site: [[layer, names[id(module)]] for layer, module in site_modules(model, site)]
                    for site in ("block", "mlp", "attn")
                },
            }
    Path(out).write_text(json.dumps(report))  # vLLM logs to stdout


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
