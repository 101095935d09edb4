"""A convention applied to the statistics of a run: MACs, accumulates and SOP events per counted module."""

from __future__ import annotations

from .collect import Call, Operand, Stats
from .conventions import Convention
from .result import LayerEnergy

WEIGHTS = ("linear", "conv")


def layer_rows(stats: list[Stats], conv: Convention, batch: int, e_mac: float, e_ac: float) -> list[LayerEnergy]:
    """One :class:`LayerEnergy` per module the convention counts, per sample."""
    rows = []
    for s in stats:
        if s.kind in WEIGHTS:
            macs, sops, events, coding = _weight(s, conv, batch)
        elif s.kind == "product":
            macs, sops, events, coding = _product(s, stats, conv)
        elif _counts_extra(conv, s.kind):
            macs, sops, events, coding = _extra(s, conv)
        else:
            continue
        rate = _rates(s, "a")
        flops = sum(c.flops for c in s.calls) / (s.steps * batch)
        row = LayerEnergy(
            name=s.name, kind=s.kind, coding=coding, steps=s.steps, flops=flops, rate=sum(rate) / s.steps,
            rate_per_step=rate, sops=sops / batch, macs=macs / batch, energy_pj=(e_mac * macs + e_ac * sops) / batch,
            ann_energy_pj=e_mac * flops, sop_events=events / batch)
        if s.kind == "product":
            row.rate_b_per_step = _rates(s, "b")
            row.rate_b = sum(row.rate_b_per_step) / s.steps
            row.sops_exact = sum(sum(c.pairs) for c in s.calls) / batch
        rows.append(row)
    return rows


def _counts_extra(conv: Convention, kind: str) -> bool:
    return kind in conv.extras or (kind == "batchnorm" and "batchnorm-eval" in conv.extras)


def _units(call: Call, conv: Convention) -> list[range]:
    """The steps of a call that one analog test covers: the whole call, or each step."""
    return [range(call.n)] if conv.test_per == "call" else [range(i, i + 1) for i in range(call.n)]


def _analog(op: Operand, steps: range, conv: Convention) -> bool:
    """The convention's value test: is this input analog over these steps? (``"first"`` decides per layer.)"""
    if conv.analog == "first":
        return False
    if conv.analog in ("binary", "counts"):
        top = 1 if conv.analog == "binary" else conv.max_count
        return not all(op.vmin[i] >= 0 and op.vmax[i] <= top and op.integer[i] for i in steps)
    amax = max(op.amax[i] for i in steps)  # "ternary": {0, ±a}, the all-zero input counting as spikes
    return amax > 0 and min(op.amin_nonzero[i] for i in steps) < amax


def _sum(op: Operand, steps: range, key: str) -> float:
    """Over ``steps``: the input's non-zero values, spikes, or absolute values' sum."""
    values = getattr(op, key)
    return sum(values[i] for i in steps)


def _accumulated(op: Operand, steps: range, conv: Convention) -> float:
    """Input elements' worth of accumulates per fan-out over ``steps`` (the firing rate times the elements)."""
    if conv.accumulates == "spikes":
        return _sum(op, steps, "spikes")
    if conv.accumulates == "values" and conv.analog in ("binary", "counts"):
        return _sum(op, steps, "abs_sum")
    return _sum(op, steps, "nonzero")  # "exact", and "values" of a ternary input: one per non-zero


def _coding(analog: int, total: int) -> str:
    return "analog" if analog == total else "spike" if analog == 0 else "mixed"


def _weight(s: Stats, conv: Convention, batch: int) -> tuple[float, float, float, str]:
    macs = sops = events = 0.0
    analog_units = units = 0
    for call in s.calls:
        bias = {"none": 0, "outputs": call.bias_outputs, "call": call.bias_call}[conv.bias]
        if conv.analog == "first" and s.analog and conv.analog_steps == "changed":
            macs += call.flops / (call.n * batch) * call.compute
            analog_units, units = analog_units + 1, units + 1
            continue
        fan_out = call.flops / (call.n * call.a.numel)  # operations per input element and step
        for steps in _units(call, conv):
            share = len(steps) / call.n
            units += 1
            if s.analog if conv.analog == "first" else _analog(call.a, steps, conv):
                macs += (call.flops + bias) * share
                analog_units += 1
                continue
            elements = call.a.numel * len(steps)
            if conv.accumulates == "exact" and call.uses is not None:
                sops += sum(call.uses[i] for i in steps)
            else:
                sops += fan_out * _accumulated(call.a, steps, conv)
            nonzero = _sum(call.a, steps, "nonzero")
            events += fan_out * nonzero
            if bias:
                sops += bias * share * _accumulated(call.a, steps, conv) / elements
                events += bias * share * nonzero / elements
    return macs, sops, events, _coding(analog_units, units)


def _rates(s: Stats, operand: str) -> list[float]:
    """Per-step fraction of non-zero elements of an operand, over every call that ran at that step."""
    return _per_step(s, operand, "nonzero")


def _per_step(s: Stats, operand: str, key: str) -> list[float]:
    total = [0.0] * s.steps
    numel = [0] * s.steps
    for call in s.calls:
        op = getattr(call, operand)
        for i, v in enumerate(getattr(op, key)):
            total[call.start + i] += v
            numel[call.start + i] += op.numel
    return [t / n if n else 0.0 for t, n in zip(total, numel)]


def _overall(s: Stats, operand: str) -> float:
    """Fraction of non-zero elements of an operand over the whole run."""
    ops = [getattr(c, operand) for c in s.calls]
    return sum(sum(op.nonzero) for op in ops) / sum(op.numel * len(op.nonzero) for op in ops)


def _pair(s: Stats, stats: list[Stats]) -> tuple[Stats, Stats] | None:
    """The two products of ``s``'s parent module (Q Kᵀ first, A V second), if it holds exactly two."""
    parent = s.name.rpartition(".")[0]
    group = [t for t in stats if t.kind == "product" and t.name.rpartition(".")[0] == parent]
    return (group[0], group[1]) if len(group) == 2 else None


def _product(s: Stats, stats: list[Stats], conv: Convention) -> tuple[float, float, float, str]:
    pair = _pair(s, stats) if conv.products in ("spikingformer", "spikezip") else None
    if conv.products == "none":
        return 0.0, 0.0, 0.0, "spike"
    if pair is not None:  # the attention formulas, T H N d^2 per sample times firing rates of Q, K, V
        first, second = pair
        r_q, r_k, r_v = _overall(first, "a"), _overall(first, "b"), _overall(second, "b")
        if s is first:
            base = sum(c.a.numel * c.n * c.a.shape[-1] for c in s.calls)
            rate = r_q if conv.products == "spikingformer" else r_q + r_k + min(r_q, r_k)
        else:
            base = sum(c.b.numel * c.n * c.b.shape[-1] for c in s.calls)
            rate = min(r_k, r_v) if conv.products == "spikingformer" else r_v + min(r_q, r_k, r_v) + min(r_q, r_k)
        return 0.0, base * rate, base * rate, "spike"
    if conv.products == "exact":
        return _exact_product(s, conv)
    # rates (and a product without a partner under a formula): FLOPs x sum_t r_a(t) r_b(t)
    flops = sum(c.flops for c in s.calls) / s.steps
    spikes = sum(a * b for a, b in zip(_per_step(s, "a", "spikes"), _per_step(s, "b", "spikes")))
    events = sum(a * b for a, b in zip(_rates(s, "a"), _rates(s, "b")))
    return 0.0, flops * spikes, flops * events, "spike"


def _exact_product(s: Stats, conv: Convention) -> tuple[float, float, float, str]:
    """Coincident pairs when both operands pass the spike test, the spiking side's non-zeros times the other
    dimension when one does, full MACs when none does (SpikingJelly's rules), per call."""
    macs = sops = 0.0
    analog = 0
    for call in s.calls:
        steps = range(call.n)
        a_spikes, b_spikes = not _analog(call.a, steps, conv), not _analog(call.b, steps, conv)
        if a_spikes and b_spikes:
            sops += sum(call.pairs)
        elif a_spikes:
            sops += sum(call.a.nonzero) * call.b.shape[-1]
        elif b_spikes:
            sops += sum(call.b.nonzero) * call.a.shape[-2]
        else:
            macs += call.flops
            analog += 1
    return macs, sops, sops, _coding(analog, len(s.calls))


def _extra(s: Stats, conv: Convention) -> tuple[float, float, float, str]:
    macs = sops = events = 0.0
    analog_units = units = 0
    for call in s.calls:
        numel = call.a.numel * call.n
        if s.kind == "neurons":  # one accumulate per input element and step
            sops += numel
            events += numel
            units += 1
        elif s.kind == "batchnorm" and "batchnorm-eval" in conv.extras:
            macs += numel if call.ops_per_element == 2 else 0  # the affine scale and shift
            sops += numel + call.channels  # x - mean, var + eps
            units += 1
        else:
            for steps in _units(call, conv):
                ops = numel * len(steps) / call.n * call.ops_per_element
                units += 1
                if _analog(call.a, steps, conv):
                    macs += ops
                    analog_units += 1
                else:
                    elements = call.a.numel * len(steps)
                    sops += ops * _accumulated(call.a, steps, conv) / elements
                    events += ops * _sum(call.a, steps, "nonzero") / elements
    return macs, sops, events, _coding(analog_units, units)
