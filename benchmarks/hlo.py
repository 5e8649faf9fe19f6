"""Parsing of XLA's compiled HLO text (`compiled.as_text()`) for the profile: which instruction belongs to which
phase of the train step (forward, backward, optimiser) and which kind of op it is."""
from __future__ import annotations

import collections
import dataclasses
import math
import re


_HLO_LINE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")


@dataclasses.dataclass(frozen=True)
class HloOp:
    """One HLO instruction of a compiled module, as much as the profile needs."""

    opcode: str
    op_name: str  # JAX's metadata, e.g. "jit(train_step)/transpose(jvp(UNet))/conv_1/conv_general_dilated"
    shape: str
    calls: str | None  # the fused computation of a fusion
    window: int  # spatial size of a convolution's window (a weight-gradient convolution spans the feature map)
    ynn: bool  # a fusion handed to XLA:CPU's YNNPACK library


def hlo_index(hlo_text: str) -> tuple[dict, dict]:
    """({instruction name: HloOp}, {computation name: set of opcodes}) of `compiled.as_text()`."""
    instrs, comps, current = {}, collections.defaultdict(set), None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) ", line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            continue
        m = _HLO_LINE.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        op_name = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%([\w.\-]+)", line)
        window = re.search(r"window=\{size=([\dx]+)", line)
        instrs[name] = HloOp(opcode, op_name.group(1) if op_name else "", shape, calls.group(1) if calls else None,
                             math.prod(int(k) for k in window.group(1).split("x")) if window else 0,
                             "__ynn_fusion" in line)
        comps[current].add(opcode)
    return instrs, comps


def phase(op: HloOp) -> str:
    """Which part of the step an HLO op comes from, by the JAX transformation stack in its metadata. XLA's
    rewrite of weight-gradient convolutions drops the metadata; they are recognised by their window."""
    if "transpose(" in op.op_name or (op.opcode == "convolution" and not op.op_name and op.window > 49):
        return "backward"
    if "jvp(" in op.op_name:
        return "forward"
    return "optimizer / other"


def category(op: HloOp, comps) -> str:
    inner = comps.get(op.calls, set()) if op.calls else set()
    if op.opcode == "convolution" or "convolution" in inner:
        return "convolution"
    kind = "dot (matmul)" if op.opcode == "dot" or "dot" in inner else \
        "reduce" if inner & {"reduce", "reduce-window"} else "elementwise / copy"
    return f"YNNPACK fusion: {kind}" if op.ynn else f"fusion: {kind}" if op.opcode == "fusion" else \
        kind if kind == "dot (matmul)" else op.opcode
