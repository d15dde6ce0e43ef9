#!/usr/bin/env python3
"""Tokenize benchmark: end-to-end images/s against encoder-only images/s, and peak memory.

    swift build -c release --product mtok
    python3 tools/bench_tokenize.py [--workdir /tmp/mtok-bench-tokenize] [--paper-images 16]
        [--rss-sizes 1000,10000] [--threads 2]

In one run, for the tiny preset (64×64) and the paper-sized preset mergevq-gr-d64-k144 (256×256),
on datasets made of the bundled real photographs (tools/demo/images, hard-linked N times):
- end-to-end images/s of `mtok tokenize` (one view per image, batch 8, --threads T);
- encoder-only images/s of `mtok bench-encoder` on the same model, batch and threads, over as
  many images (the encoder's own time only: no decoding, no writing, no process start);
- the steady-state end-to-end rate, from a quarter-size run of the same command:
  (N - N/4) / (t(N) - t(N/4)), and the fixed cost per run that it leaves out (process start,
  model load, sealing: a dataset-sized run spreads it over a million images);
- the ratios of both end-to-end rates to the encoder-only rate (target >= 0.90);
- peak RSS of tokenize runs on the tiny preset at each --rss-sizes count (target: the largest
  within 10 % of the smallest).
Only the Python standard library is needed. Each figure is the median of --repeats runs.
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "tools", "demo", "images")


def make_dataset(path, count):
    shutil.rmtree(path, ignore_errors=True)
    photos = [os.path.join(d, f) for d in sorted(os.listdir(PHOTOS)) for f in sorted(os.listdir(os.path.join(PHOTOS, d)))]
    for i in range(count):
        cls = os.path.join(path, f"c{i % 10}")
        os.makedirs(cls, exist_ok=True)
        src = os.path.join(PHOTOS, photos[i % len(photos)])
        os.link(src, os.path.join(cls, f"{i:07d}.jpg"))
    return path


def run_measured(cmd):
    """Runs cmd; returns (seconds, peak RSS bytes, stdout)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return secs, usage.ru_maxrss * 1024, out


def tokenize(mtok, data, model, out, res, threads, batch=8, limit=None):
    """Images/s of one whole `mtok tokenize` process (start, model load and sealing included),
    its peak RSS and its wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [mtok, "tokenize", data, "--model", model, "--out", out, "--resolution", str(res),
           "--views", "center", "--batch-size", str(batch), "--threads", str(threads)]
    secs, rss, text = run_measured(cmd + (["--limit", str(limit)] if limit else []))
    images = int(re.search(r"images\s+(\d+) this run", text).group(1))
    return images / secs, rss, secs


def encoder_only(mtok, model, threads, images, batch=8):
    """Encoder-only images/s over as many images as the end-to-end run: `mtok bench-encoder`
    answers one JSON line per "encode" command on stdin (one timed batch each, after a warm-up
    batch); the rate is all images over the sum of the timed calls, so both sides run about as
    long and see the same stretch of machine load."""
    calls = max(1, images // batch)
    out = subprocess.run([mtok, "bench-encoder", "--model", model, "--batch", str(batch), "--threads", str(threads),
                          "--gemm-size", "64"], input="encode\n" * calls, check=True, capture_output=True, text=True).stdout
    seconds = [json.loads(line)["seconds"] for line in out.splitlines() if '"images_per_second"' in line]
    return batch * len(seconds) / sum(seconds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/mtok-bench-tokenize")
    ap.add_argument("--mtok", default=os.path.join(ROOT, ".build/release/mtok"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    # 1,600 tiny images take about 7 s end to end here: long enough that the ~0.06 s a process
    # spends starting and finishing weighs as little as it does in real runs, short enough to repeat.
    ap.add_argument("--tiny-images", type=int, default=1600)
    ap.add_argument("--paper-images", type=int, default=16)
    ap.add_argument("--rss-sizes", default="1000,10000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    w = args.workdir
    models = {}
    for preset, res in [("tiny", 64), ("mergevq-gr-d64-k144", 256)]:
        path = os.path.join(w, preset + ".safetensors")
        if not os.path.exists(path):
            subprocess.run([args.mtok, "model", "init", "--preset", preset, "--seed", "0", "--out", path], check=True,
                           capture_output=True)
        models[preset] = (path, res)

    rows = []
    for preset, count in [("tiny", args.tiny_images), ("mergevq-gr-d64-k144", args.paper_images)]:
        model, res = models[preset]
        data = make_dataset(os.path.join(w, f"data-{preset}"), count)
        # Interleaved round by round, so all sides see the same machine load. A quarter-size run
        # of the same command gives the steady-state rate, (N - N/4) / (t(N) - t(N/4)): what a
        # dataset-sized run gets once start-up (process, model, first decodes) and the finish
        # (last commit, sealing, digest) are spread over many images.
        small = max(1, count // 4)
        wholes, steadies, fixed, encs = [], [], [], []
        for _ in range(args.repeats):
            rate, _, t_all = tokenize(args.mtok, data, model, os.path.join(w, "cache"), res, args.threads)
            _, _, t_small = tokenize(args.mtok, data, model, os.path.join(w, "cache"), res, args.threads, limit=small)
            steady = (count - small) / max(t_all - t_small, 1e-9)
            wholes.append(rate)
            steadies.append(steady)
            fixed.append(t_all - count / steady)
            encs.append(encoder_only(args.mtok, model, args.threads, count))
        rows.append((preset, count, statistics.median(wholes), statistics.median(steadies),
                     statistics.median(encs), statistics.median(fixed)))

    print(f"tokenize benchmark: {args.threads} threads, batch 8, one view, medians of {args.repeats}")
    print(f"{'preset':22}{'images':>7}{'whole run':>11}{'steady':>9}{'encoder-only':>14}"
          f"{'ratio whole':>13}{'ratio steady':>14}{'fixed s':>9}   (img/s; target ratio >= 0.90)")
    for preset, count, whole, steady, enc, fix in rows:
        print(f"{preset:22}{count:>7}{whole:>11.2f}{steady:>9.2f}{enc:>14.2f}{whole / enc:>13.3f}{steady / enc:>14.3f}"
              f"{fix:>9.3f}")

    sizes = [int(s) for s in args.rss_sizes.split(",")]
    model, res = models["tiny"]
    rss = []
    for n in sizes:
        data = make_dataset(os.path.join(w, "data-rss"), n)
        rate, peak, _ = tokenize(args.mtok, data, model, os.path.join(w, "cache-rss"), res, args.threads)
        rss.append(peak)
        print(f"peak RSS, tiny preset, {n:>6} images: {peak / 2**20:8.1f} MiB  ({rate:.1f} img/s)")
    print(f"peak RSS at {sizes[-1]} / at {sizes[0]}: {rss[-1] / rss[0]:.3f}   target <= 1.10")


if __name__ == "__main__":
    main()
