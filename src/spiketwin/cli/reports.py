"""``spiketwin energy`` and ``spiketwin export-nir``: what a spiking model costs, and the model as an NIR file."""

from __future__ import annotations

import argparse

from ..energy import CONVENTIONS, PRESETS, NotSpikingError, simulation_run
from ..inputs import to
from .data import add_data_options, first_samples, load_data
from .model import add_model_options, load_model
from .raster import add_raster_options, write_raster
from .usage import Command, require


def _energy_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "the SNN (a directly trained model, or an SNN checkpoint)")
    add_data_options(p)
    p.add_argument("--samples", type=int, default=64, help="test samples to average over (default: 64)")
    p.add_argument("--max-steps", type=int, default=64, help="time steps for a converted SNN (default: 64)")
    p.add_argument("--preset", default="fp32", choices=sorted(PRESETS),
                   help="45 nm energy per op (Horowitz 2014; default fp32: MAC 4.6 pJ, AC 0.9 pJ)")
    p.add_argument("--e-mac", type=float, help="energy per MAC in pJ (overrides --preset)")
    p.add_argument("--e-ac", type=float, help="energy per accumulate in pJ (overrides --preset)")
    p.add_argument("--convention", default="spiketwin", metavar="NAME[,NAME...]",
                   help=f"what is counted: one or more of {', '.join(CONVENTIONS)} (comma-separated), or 'all'; "
                        "several are compared from one run (default: spiketwin; docs/energy.md)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON (several conventions: "
                                                  "{'conventions': {name: report}})")
    p.add_argument("--csv", metavar="FILE", help="also write the report as CSV (a convention column)")
    p.add_argument("--plot", metavar="PNG", help="write the firing rate per layer here")
    add_raster_options(p)


def _conventions(value: str) -> list[str]:
    names = list(CONVENTIONS) if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in CONVENTIONS]
    if unknown or not names:
        raise ValueError(f"energy: --convention {value!r}: unknown {unknown or 'empty'}; give one or more of "
                         f"{', '.join(CONVENTIONS)} (comma-separated) or 'all'")
    return names


def cmd_energy(args) -> None:
    import json

    from ..energy import compare, comparison_table, csv_text
    from ..energy.result import write_text

    names = _conventions(args.convention)
    model, info = load_model(args, stages=("ann", "snn"))
    x = to(first_samples(load_data(args)[1], args.samples)[0], args.device)
    run = simulation_run(args.max_steps) if hasattr(model, "simulate") else None
    try:
        reports = compare(model, x, names, preset=args.preset, e_mac=args.e_mac, e_ac=args.e_ac, run=run)
    except NotSpikingError as e:
        raise ValueError(f"energy: {info['model']} ({info['stage']}) is not spiking; give a directly trained "
                         "SNN or an SNN checkpoint (spiketwin convert)") from e
    result = reports[names[0]]
    print(result.table())
    if len(names) > 1:
        print(f"\nthe same run under {len(names)} conventions (per sample; the table above: {names[0]}):")
        print(comparison_table(reports))
    if args.json:
        if len(names) == 1:
            result.to_json(args.json)
        else:
            write_text(args.json, json.dumps({"conventions": {n: r.to_dict() for n, r in reports.items()}},
                                             indent=2) + "\n")
        print(f"energy: wrote {args.json}")
    if args.csv:
        write_text(args.csv, csv_text(list(reports.values())))
        print(f"energy: wrote {args.csv}")
    if args.plot:
        from ..plots import firing_rates

        print(f"energy: wrote {firing_rates(result, args.plot)}")
    write_raster(model, x, args, run)


def _export_nir_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p, "the SNN")
    add_data_options(p)
    p.add_argument("--out", metavar="FILE", help="the NIR file to write (required)")
    p.add_argument("--submodule", metavar="PATH", help="export only this part (default: the model's "
                                                        "step_network when it has one, else the whole model; "
                                                        "'' for the whole model)")
    p.add_argument("--target", choices=("nir", "snntorch", "norse"), default="nir",
                   help="who reads the file: 'nir' (NIR as specified), 'snntorch' (snntorch.import_nir."
                        "import_from_nir) or 'norse' (norse.torch.from_nir); each gets the dt, Flatten dims, "
                        "pooling and thresholds its importer reproduces our spikes from (default nir)")
    p.add_argument("--dt", type=float, help="time per step for NIR's continuous neurons (default: 1 for nir, "
                                            "1e-3 for norse (give Norse the same dt); snnTorch's is fixed at 1e-4)")
    p.add_argument("--samples", type=int, default=8, help="test samples for the shapes and the read-back check")


def cmd_export_nir(args) -> None:
    from ..export import check, to_nir

    require(args, "out")
    model, info = load_model(args, stages=("ann", "snn"))
    submodule = args.submodule if args.submodule is not None else (
        "step_network" if hasattr(model, "step_network") else "")
    submodule = submodule or None  # "" exports the whole model
    x = first_samples(load_data(args)[1], args.samples)[0].to(args.device)
    graph = to_nir(model.eval(), x, args.out, submodule=submodule, dt=args.dt, target=args.target)
    print(f"export-nir: wrote {args.out} ({len(graph.nodes)} nodes, {len(graph.edges)} edges"
          f"{f', sub-module {submodule}' if submodule else ''}; one time step, dt={float(graph.metadata['dt']):g}, "
          f"for {args.target})")
    for reader in ("spiketwin", args.target) if args.target != "nir" else ("spiketwin",):
        try:
            diff = check(model, args.out, x, submodule=submodule, reader=reader)
        except ImportError as e:
            print(f"export-nir: not read back with {reader}: {e}")
            continue
        print(f"export-nir: read back with {'nirtorch' if reader == 'spiketwin' else reader} and run on {len(x)} test "
              f"samples: max |output difference| = {diff:.3g}")
        if diff > 1e-4:
            raise RuntimeError(f"the NIR file read with {reader} does not reproduce the model (max difference "
                               f"{diff:.3g})")


COMMANDS = {
    "energy": Command("operation counts, firing rates and energy of an SNN beside its ANN", _energy_options,
                      cmd_energy),
    "export-nir": Command("write the SNN as an NIR graph (what NIR can express; the rest is listed)",
                          _export_nir_options, cmd_export_nir),
}
