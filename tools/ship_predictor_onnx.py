"""Write the predictor export that ships beside its checkpoint (``<checkpoint>/onnx/``), so the default graph's
first run needs no ONNX export; ``cached_fused_onnx`` uses it while its name (the weights' hash) matches.

    python -m evpipe.tools.ship_predictor_onnx                    # tiny, 4step-coarse4: the default graph's
    python -m evpipe.tools.ship_predictor_onnx --checkpoint DIR --variant 2step

Every other export in that folder is removed (one ships); the torch vs ONNX Runtime parity is printed.
"""

from __future__ import annotations

import argparse

from evpipe.nodes.predict.checkpoint import load_model, resolve_dir
from evpipe.nodes.predict.export import SHIPPED, export_fused, export_name, parity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="tiny", help="shipped checkpoint name or directory (default tiny)")
    parser.add_argument("--variant", default="4step-coarse4", help="checkpoint variant (default 4step-coarse4)")
    args = parser.parse_args(argv)
    directory = resolve_dir(args.checkpoint)
    model, steps = load_model(args.variant, directory)
    folder = directory / SHIPPED
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.onnx"):
        old.unlink()
    path = folder / f"{export_name(directory, args.variant, model.config.compose)}.onnx"
    export_fused(model, steps, path)
    m = model.multiple  # a square and the DAVIS346 frame (346x260), padded to the variant's multiple
    sizes = ((2 * m, 2 * m), (-(-260 // m) * m, -(-346 // m) * m))
    print(f"{path}: max |torch - onnxruntime| = {parity(model, steps, path, sizes):.2e} at {sizes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
