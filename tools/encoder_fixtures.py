#!/usr/bin/env python3
"""Writes the golden encoder fixtures into Tests/EncoderModelTests/Fixtures.

For each tiny preset of ENCODER.md §7 (tiny, tiny-iso, tiny-nomerge, and tiny-vae-vq: the MergeTok
variant with a 2z VAE head and a 64×8 codebook): seeded random weights (§7 recipe), and the reference
outputs for two input images (uniform in [-1, 1], and one with large constant regions that produces
exact score ties, §3.5). Expected values come from the reference run in float64, so the committed
numbers are the exact maths; a float32 run is compared against them and reported (not stored).

    python tools/encoder_fixtures.py            # rewrites the fixtures
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder_reference import PRESETS, Reference, config_json, random_state_dict  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "EncoderModelTests", "Fixtures")

# case → (weights file stem, seed, input images used, trace points stored for the first image)
# tiny-iso skips the flat image: with a 4×4 patchify stem every flat patch is the same token, and
# after the first merge (x+x+…)/n differs from x by an ulp, so later merge decisions between
# cosines of 1 ± ulp are set by rounding (spec §3.5's near-tie case), not by the maths.
CASES = {
    "tiny": ("tiny", 1, [0, 1], ["conv_in", "down.0", "down.1", "down.2", "tokens", "blocks.0", "blocks.1",
                                 "head"]),
    "tiny-nomerge": ("tiny", 1, [0, 1], ["blocks.0", "blocks.1", "head"]),
    "tiny-iso": ("tiny-iso", 2, [0, 2], ["conv_in", "stem", "tokens", "blocks.0", "blocks.1", "head"]),
    "tiny-vae-vq": ("tiny-vae-vq", 3, [0, 1], ["down.2", "blocks.1", "head"]),
}


def inputs(resolution: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    a = torch.rand(3, resolution, resolution, generator=g, dtype=torch.float64) * 2 - 1
    b = torch.rand(3, resolution, resolution, generator=g, dtype=torch.float64) * 2 - 1
    h = resolution // 2
    # One flat colour over the left half and the bottom-right quadrant. A single colour matters:
    # identical tokens then have bit-identical scores in any row-consistent arithmetic, so the §3.5
    # tie rules (not rounding) decide. Two different flat colours would make their self-similarities
    # 1 ± ulp, an ordering set by rounding noise that no two implementations share.
    colour = torch.tensor([-0.25, 0.5, 0.75], dtype=torch.float64)[:, None, None]
    b[:, :, :h] = colour
    b[:, h:, h:] = colour
    # Round to float32 first so the float64 reference sees exactly the committed input.
    c = torch.rand(3, resolution, resolution, generator=g, dtype=torch.float64) * 2 - 1
    return torch.stack([a, b, c]).to(torch.float32)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    x = inputs(64)
    save_file({"input": x.numpy()}, os.path.join(OUT, "inputs.safetensors"))
    written = set()
    for case, (stem, seed, image_ids, points) in CASES.items():
        xc = x[image_ids]
        cfg = PRESETS[case]
        wcfg = PRESETS[stem]
        sd = random_state_dict(wcfg, seed)
        if stem not in written:
            meta = {"mtok.config": config_json(wcfg), "mtok.untrained": "true", "mtok.seed": str(seed),
                    "mtok.generator": "tools/encoder_fixtures.py (torch.Generator)"}
            save_file({k: v.numpy() for k, v in sd.items()}, os.path.join(OUT, stem + ".safetensors"), meta)
            written.add(stem)
        traces = {}

        def trace(name, t):
            if name in points:
                traces["trace." + name] = t.squeeze(0).to(torch.float32).contiguous().numpy().copy()

        exact = Reference(cfg, sd, torch.float64).encode(xc.to(torch.float64), trace)
        single = Reference(cfg, sd, torch.float32).encode(xc)
        out = {
            "latents": np.stack([o["latents"].to(torch.float32).contiguous().numpy() for o in exact]),
            "indices": np.stack([o["indices"].numpy().astype(np.uint32) for o in exact]),
            "groups": np.stack([o["groups"].numpy().astype(np.uint16) for o in exact]),
            "sizes": np.stack([o["sizes"].numpy().astype(np.int32) for o in exact]),
            "images": np.array(image_ids, dtype=np.int32),
        }
        if exact[0]["logvar"] is not None:
            out["logvar"] = np.stack([o["logvar"].to(torch.float32).contiguous().numpy() for o in exact])
        out.update(traces)
        save_file(out, os.path.join(OUT, case + ".expected.safetensors"), {"mtok.config": config_json(cfg)})
        dl = max(float((e["latents"] - s["latents"].double()).abs().max()) for e, s in zip(exact, single))
        same = all(torch.equal(e["indices"], s["indices"]) and torch.equal(e["groups"], s["groups"])
                   for e, s in zip(exact, single))
        print(f"{case}: K={out['latents'].shape[1]} float32-vs-float64 latent max|d|={dl:.2e} "
              f"indices/groups equal: {same}")


if __name__ == "__main__":
    main()
