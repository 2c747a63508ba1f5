"""Number formats that fit the hardware: what `trainer.precision=auto` and `float32_matmul_precision=auto`
become on the device a run uses; and the weights' dtype for generating.

bf16 autocast pays where the device computes bf16 natively: CUDA GPUs that support it
(Ampere and later), and CPUs with AVX512-BF16 or AMX instructions. Elsewhere bf16 is emulated
and slower than float32, so auto stays with 32-true there.
"""

import torch

MATMUL_PRECISIONS = ("highest", "high", "medium")
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def device_type(accelerator: str) -> str:
    """The device type a Trainer with this accelerator runs on (Lightning's auto: CUDA, then
    Apple's MPS, then the CPU)."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("auto", "gpu", "mps") and torch.backends.mps.is_available():
        return "mps"
    # a device this machine lacks (accelerator=cuda without one) is Lightning's to refuse
    return "cpu" if accelerator in ("auto", "cpu") else f"{accelerator} (not available)"


def native_bf16(kind: str) -> str | None:
    """Why a device of this type computes bf16 natively, or None when it does not."""
    if kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{torch.cuda.get_device_name()} computes bf16 natively"
    if kind == "cpu":
        features = [
            name
            for name, supported in (
                ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()),
                ("AMX", torch.cpu._is_amx_tile_supported()),
            )
            if supported
        ]
        if features:
            return f"this CPU computes bf16 natively ({' and '.join(features)})"
    return None


def auto_precision(accelerator: str) -> tuple[str, str]:
    """What trainer.precision=auto is on this accelerator, and why: bf16-mixed where the device
    computes bf16 natively, else 32-true."""
    device = device_type(accelerator)
    if reason := native_bf16(device):
        return "bf16-mixed", reason
    return "32-true", f"no native bf16 on this device ({device})"


def resolve_float32_matmul(setting: str, accelerator: str) -> str:
    """torch.set_float32_matmul_precision's argument: auto is high (TF32 tensor cores) on CUDA
    GPUs that have them (Ampere and later) and highest (plain float32) elsewhere."""
    if setting != "auto":
        if setting not in MATMUL_PRECISIONS:
            raise ValueError(
                f"float32_matmul_precision={setting!r} is not allowed: "
                f"use auto or one of {list(MATMUL_PRECISIONS)}"
            )
        return setting
    on_tf32_gpu = device_type(accelerator) == "cuda" and torch.cuda.get_device_capability() >= (8, 0)
    return "high" if on_tf32_gpu else "highest"


def inference_dtype(setting: str) -> torch.dtype:
    """The weights' dtype for generating, by name."""
    if setting not in INFERENCE_DTYPES:
        raise ValueError(f"dtype={setting!r} is not allowed: use one of {list(INFERENCE_DTYPES)}")
    return INFERENCE_DTYPES[setting]
