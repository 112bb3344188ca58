"""Accelerators `archc estimate` knows: memory, memory bandwidth and dense peak FLOP/s per
dtype, each from the vendor's public datasheet (named beside it). Dense means without 2:4
structured sparsity, which datasheets often quote at twice the figure.

Add one for a run with `--hardware-file my.toml`:

    [hardware.my_gpu]
    description = "My GPU, 96 GB"
    memory_gb = 96                       # 10^9 bytes, as datasheets count
    bandwidth_tb_s = 4.0                 # 10^12 bytes/s
    tflops = { bf16 = 800, fp8 = 1600, fp32 = 60 }   # dense
    source = "where the figures come from"
    node_size = 8                        # devices per node (optional: `--advise` needs the three)
    intra_node_gb_s = 450                # 10^9 bytes/s per device and direction, inside a node
    inter_node_gb_s = 50                 # 10^9 bytes/s per device and direction, between nodes

The interconnect figures are per device and per direction (what a ring collective's bus
bandwidth is bounded by): NVLink's datasheet total is both directions, so half of it; a node's
network is one NIC per device in the vendors' reference systems.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from archlang.spec.errors import ArchError

DTYPES = ("fp8", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    memory_bytes: float
    bandwidth: float  # bytes/s
    flops: dict[str, float]  # dtype → dense FLOP/s
    source: str
    node_size: int | None = None  # devices per node
    intra_node_bandwidth: float | None = None  # bytes/s per device and direction (NVLink, Infinity Fabric)
    inter_node_bandwidth: float | None = None  # bytes/s per device and direction (the node's network)
    interconnect_source: str = ""

    def peak(self, dtype: str) -> float:
        if dtype not in self.flops:
            raise ArchError(f"{self.description} has no {dtype} peak in its table",
                            hint=f"use --dtype {' or '.join(self.flops)}, or another --hardware", kind="usage")
        return self.flops[dtype]


def _gpu(name, description, memory_gb, bandwidth_tb_s, tflops, source, interconnect=None) -> Hardware:
    """`interconnect`: (devices per node, intra-node GB/s, inter-node GB/s, source), per device and direction."""
    node, intra, inter, where = interconnect or (None, None, None, "")
    return Hardware(name, description, memory_gb * 1e9, bandwidth_tb_s * 1e12,
                    {k: v * 1e12 for k, v in tflops.items()}, source, node,
                    intra * 1e9 if intra else None, inter * 1e9 if inter else None, where)


HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    _gpu("h100", "NVIDIA H100 SXM5 80 GB", 80, 3.35, {"fp8": 1978.9, "bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
         "NVIDIA H100 Tensor Core GPU datasheet (SXM; fp32 is TF32 tensor-core)",
         (8, 450, 50, "H100 SXM datasheet: NVLink 900 GB/s (both directions); DGX H100 datasheet: 8 GPUs and "
                      "8 x 400 Gb/s ConnectX-7 per node")),
    _gpu("h200", "NVIDIA H200 SXM 141 GB", 141, 4.8, {"fp8": 1978.9, "bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
         "NVIDIA H200 Tensor Core GPU datasheet (SXM; fp32 is TF32 tensor-core)",
         (8, 450, 50, "H200 SXM datasheet: NVLink 900 GB/s (both directions); DGX H200 datasheet: 8 GPUs and "
                      "8 x 400 Gb/s ConnectX-7 per node")),
    _gpu("b200", "NVIDIA B200 180 GB", 180, 8.0, {"fp8": 4500, "bf16": 2250, "fp16": 2250, "fp32": 1100},
         "NVIDIA DGX B200 datasheet, per GPU (one eighth of the system's 72 PFLOPS sparse FP8, 1,440 GB, "
         "64 TB/s); fp32 is TF32 tensor-core",
         (8, 900, 50, "DGX B200 datasheet: 8 GPUs, NVLink 1.8 TB/s per GPU (both directions), "
                      "8 x 400 Gb/s ConnectX-7 per node")),
    _gpu("a100", "NVIDIA A100 SXM4 80 GB", 80, 2.039, {"bf16": 312, "fp16": 312, "fp32": 156},
         "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80 GB; fp32 is TF32 tensor-core)",
         (8, 300, 25, "A100 datasheet: NVLink 600 GB/s (both directions); DGX A100 datasheet: 8 GPUs and "
                      "8 x 200 Gb/s ConnectX-6 per node")),
    _gpu("mi300x", "AMD Instinct MI300X 192 GB", 192, 5.3, {"fp8": 2614.9, "bf16": 1307.4, "fp16": 1307.4,
                                                          "fp32": 163.4},
         "AMD Instinct MI300X accelerator datasheet (fp32 is matrix FP32)",
         (8, 448, 50, "MI300X platform datasheet: 8 GPUs, 896 GB/s aggregate peer-to-peer Infinity Fabric "
                      "(both directions); one 400 Gb/s NIC per GPU assumed (no vendor system figure)")),
    _gpu("cpu", "Intel Xeon Platinum 8480+ (one socket, 56 cores, 8 x DDR5-4800)", 512, 0.3072,
         {"bf16": 114.7, "fp32": 7.2},
         "Intel Xeon Platinum 8480+ product brief: AMX 1,024 BF16 FLOP/cycle/core and AVX-512 64 FP32 "
         "FLOP/cycle/core at 2.0 GHz, 8 channels of DDR5-4800 (38.4 GB/s each); memory as installed, "
         "512 GB assumed",
         (1, 12.5, 12.5, "one socket per node; 100 Gb/s Ethernet between nodes assumed")),
)}


_INTERCONNECT = ("node_size", "intra_node_gb_s", "inter_node_gb_s")


def _number(table: dict, key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ArchError(f"{where}: `{key}` must be a positive number, got {value!r}",
                        hint="see the format in `archc estimate --help`", kind="usage")
    return float(value)


def load_hardware_file(path: str | Path) -> dict[str, Hardware]:
    """The [hardware.NAME] tables of a TOML file, checked."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ArchError(f"cannot read {path}: {exc.strerror or exc}", kind="usage") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ArchError(f"{path}: not valid TOML: {exc}", kind="usage") from None
    tables = data.get("hardware")
    if not isinstance(tables, dict) or not tables:
        raise ArchError(f"{path}: no [hardware.NAME] table", hint="see the format in `archc estimate --help`",
                        kind="usage")
    out = {}
    for name, t in tables.items():
        where = f"{path}: [hardware.{name}]"
        if not isinstance(t, dict):
            raise ArchError(f"{where} is not a table", kind="usage")
        unknown = set(t) - {"description", "memory_gb", "bandwidth_tb_s", "tflops", "source", *_INTERCONNECT}
        if unknown:
            raise ArchError(f"{where}: unknown key {sorted(unknown)[0]!r}",
                            hint=f"keys: description, memory_gb, bandwidth_tb_s, tflops, source, "
                                 f"{', '.join(_INTERCONNECT)}", kind="usage")
        memory, bandwidth = _number(t, "memory_gb", where), _number(t, "bandwidth_tb_s", where)
        tflops = t.get("tflops")
        if not isinstance(tflops, dict) or not tflops:
            raise ArchError(f"{where}: `tflops` must be a table of dtype = dense TFLOP/s", kind="usage")
        bad = set(tflops) - set(DTYPES)
        if bad:
            raise ArchError(f"{where}: unknown dtype {sorted(bad)[0]!r} in tflops", hint=f"one of {', '.join(DTYPES)}",
                            kind="usage")
        interconnect = None
        if any(k in t for k in _INTERCONNECT):  # all three or none: a half-described network would be guessed at
            missing = [k for k in _INTERCONNECT if k not in t]
            if missing:
                raise ArchError(f"{where}: `{missing[0]}` missing beside the other interconnect figures",
                                hint=f"give all of {', '.join(_INTERCONNECT)}", kind="usage")
            node = t["node_size"]
            if isinstance(node, bool) or not isinstance(node, int) or node < 1:
                raise ArchError(f"{where}: `node_size` must be a positive integer, got {node!r}", kind="usage")
            interconnect = (node, _number(t, "intra_node_gb_s", where), _number(t, "inter_node_gb_s", where),
                            str(t.get("source", str(path))))
        out[name] = _gpu(name, str(t.get("description", name)), memory, bandwidth,
                         {k: _number(tflops, k, where + ".tflops") for k in tflops}, str(t.get("source", str(path))),
                         interconnect)
    return out
