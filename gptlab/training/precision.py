"""Devices and number formats that fit the hardware: which device a setting names; what
`trainer.precision=auto` and `float32_matmul_precision=auto` become on the device a run uses;
and the weights' dtype for generating.

bf16 autocast pays where the device computes bf16 natively: CUDA GPUs that support it
(Ampere and later), and CPUs with AVX512-BF16 or AMX instructions. Elsewhere bf16 is emulated
and slower than float32, so auto stays with 32-true there.
"""

import torch

MATMUL_PRECISIONS = ("highest", "high", "medium")
INFERENCE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def native_bf16(device: torch.device) -> str | None:
    """Why this device computes bf16 natively, or None when it does not."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return f"{torch.cuda.get_device_name(device)} computes bf16 natively"
    if device.type == "cpu":
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


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What trainer.precision=auto is on this device, and why: bf16-mixed where the device
    computes bf16 natively, else 32-true."""
    if reason := native_bf16(device):
        return "bf16-mixed", reason
    return "32-true", f"no native bf16 on this device ({device})"


def resolve_float32_matmul(setting: str, device: torch.device) -> str:
    """torch.set_float32_matmul_precision's argument: auto is high (TF32 tensor cores) on CUDA
    GPUs that have them (Ampere and later) and highest (plain float32) elsewhere."""
    if setting != "auto":
        if setting not in MATMUL_PRECISIONS:
            raise ValueError(
                f"float32_matmul_precision={setting!r} is not allowed: "
                f"use auto or one of {list(MATMUL_PRECISIONS)}"
            )
        return setting
    on_tf32_gpu = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    return "high" if on_tf32_gpu else "highest"


def inference_dtype(setting: str) -> torch.dtype:
    """The weights' dtype for generating, by name."""
    if setting not in INFERENCE_DTYPES:
        raise ValueError(f"dtype={setting!r} is not allowed: use one of {list(INFERENCE_DTYPES)}")
    return INFERENCE_DTYPES[setting]


def pick_device(name: str, key: str = "device") -> torch.device:
    """The device a setting names, checked to be on this machine. auto (and Lightning's gpu)
    picks as Lightning's Trainer does: CUDA, then Apple's MPS, then (auto only) the CPU."""
    if name in ("auto", "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        if name == "auto":
            return torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(f"{key}={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
        available = {
            "cpu": True,
            "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
            "mps": torch.backends.mps.is_available(),
        }
        if available.get(device.type, False):
            return device
    raise ValueError(f"{key}={name} is not available on this machine: use {key}=auto or {key}=cpu")
