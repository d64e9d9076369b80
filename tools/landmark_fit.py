"""How often a misplaced box pulls the 68-point fit off the face, and what the fit check does.

dlib's shape predictor starts from the box it is given: a box that cuts the chin or sits
too high (a smiling, open mouth; a loose or foreign box convention) gives landmarks that
follow the box, and the mask then covers the nose and upper lip while the mouth shows
below it.  :meth:`masktheface.landmarks.FaceAnalyzer.fit` refits from the box the
landmarks imply and reports a fit that does not settle.

For ``--n`` random LFW images (seeded), the main face's fit from its HOG box is the
reference.  The box is then moved (up, down, left, scaled) as a badly placed box would be,
and fitted three times: plain (``refit=False``), checked (as a detected box is) and checked
with snapping (as a supplied box is: an unsettled fit is redone from the detector's box
around it, ``FaceAnalyzer.snap``).  The reference is the fit from the detector's box, so
snapping can reproduce it exactly: its figures say how often the detector finds the face
around a misplaced box, not how right dlib's fit is.  A *misfit* is a fit whose mouth
points (48..67) lie more than ``--bad`` eye distances (mean) from the reference's.  Also
printed: the implied-box constants measured on these faces (``FaceAnalyzer.IMPLIED_BOX``
was set from this output) and the time of a fit.

    python tools/landmark_fit.py --n 300 --out docs/results/landmark_fit
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import cv2
import numpy as np

from masktheface.datadir import DATA_HINT, shared_data
from masktheface.geometry import primary_face
from masktheface.landmarks import FaceAnalyzer, eye_distance

#: box moves: (dx, dy) as fractions of the box side, scale
MOVES = {"as detected": (0.0, 0.0, 1.0), "up 10 %": (0.0, -0.10, 1.0), "up 20 %": (0.0, -0.20, 1.0),
         "down 15 %": (0.0, 0.15, 1.0), "left 15 %": (-0.15, 0.0, 1.0), "1.3x larger": (0.0, 0.0, 1.3),
         "0.8x smaller": (0.0, 0.0, 0.8)}


def moved(box, dx: float, dy: float, k: float) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    bw, bh = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + dx * bw, (y0 + y1) / 2 + dy * bh
    return (cx - bw * k / 2, cy - bh * k / 2, cx + bw * k / 2, cy + bh * k / 2)


def mouth_error(lm: np.ndarray, ref: np.ndarray) -> float:
    """Mean distance of the mouth points (48..67) from the reference's, in eye distances."""
    return float(np.linalg.norm(lm[48:68] - ref[48:68], axis=1).mean()) / eye_distance(ref)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="LFW images to sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad", type=float, default=0.15, help="misfit: mouth points this far off (eye distances)")
    p.add_argument("--out", default="", help="folder for summary.json and table.md (default: print only)")
    args = p.parse_args(argv)
    lfw = shared_data("lfw", "lfw-deepfunneled")
    if lfw is None:
        p.error(f"LFW not found: {DATA_HINT}")
    files = sorted(glob.glob(str(lfw / "*" / "*.jpg")))
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in rng.choice(len(files), min(args.n, len(files)), replace=False)]

    plain, checked = FaceAnalyzer(refit=False), FaceAnalyzer()
    faces, rel = [], []
    for fn in files:
        rgb = cv2.cvtColor(cv2.imread(fn), cv2.COLOR_BGR2RGB)
        dets = plain.detections(rgb)
        i = primary_face([d.box for d in dets], rgb.shape)
        if i is None:
            continue
        box = dets[i].box
        lm = plain.landmarks(rgb, box)
        faces.append((Path(fn).name, rgb, box, lm))
        # the implied box, measured: the HOG box centre's offset from the inner points' mean, and its side
        c, eye = lm[17:].astype(np.float64).mean(0), eye_distance(lm)
        rel.append(np.array([(box[0] + box[2]) / 2 - c[0], (box[1] + box[3]) / 2 - c[1], box[2] - box[0]]) / eye)
    implied = np.median(np.array(rel), 0) if rel else np.full(3, np.nan)

    rows, fit_s, snap_s = {}, [], []
    for name, (dx, dy, k) in MOVES.items():
        before, after, refitted, reported, unstable_names = 0, 0, 0, 0, []
        snap_after, snap_reported = 0, 0
        for fname, rgb, box, ref in faces:
            b = moved(box, dx, dy, k)
            t = time.perf_counter()
            lm0 = plain.landmarks(rgb, b)
            fit_s.append(time.perf_counter() - t)
            before += mouth_error(lm0, ref) > args.bad
            lm, refits, error = checked.fit(rgb, b)
            refitted += refits > 0
            if error:
                reported += 1
                unstable_names.append(fname)
            else:
                after += mouth_error(lm, ref) > args.bad
            if refits or error:   # the supplied-box path differs only here
                t = time.perf_counter()
                checked.snap(rgb, b)
                snap_s.append(time.perf_counter() - t)
                lm, refits, error = checked.fit(rgb, b, lm0, snap=True)
            if error:
                snap_reported += 1
            else:
                snap_after += mouth_error(lm, ref) > args.bad
        rows[name] = {"faces": len(faces), "misfits_plain": int(before), "refitted": int(refitted),
                      "reported": int(reported), "misfits_checked": int(after),
                      "misfits_snapped": int(snap_after), "reported_snapped": int(snap_reported),
                      "reported_files": unstable_names if name == "as detected" else len(unstable_names)}
        print(f"{name:>13}: misfits {before:3d} -> {after:3d} of {len(faces)}; refitted {refitted}, "
              f"reported {reported}; snapped: misfits {snap_after}, reported {snap_reported}", flush=True)
    summary = {"command": "python tools/landmark_fit.py " + " ".join(argv or []), "n_images": len(files),
               "badeye_distances": args.bad, "implied_box_measured": [round(float(v), 3) for v in implied],
               "implied_box_used": list(FaceAnalyzer.IMPLIED_BOX), "refit_shift": FaceAnalyzer.REFIT_SHIFT,
               "max_refits": FaceAnalyzer.MAX_REFITS, "fit_ms_median": round(1000 * float(np.median(fit_s)), 2),
               "snap_ms_median": round(1000 * float(np.median(snap_s)), 2) if snap_s else None,
               "moves": rows}
    print(f"implied box measured (dx, dy, side in eye distances): {summary['implied_box_measured']}; "
          f"a fit: {summary['fit_ms_median']} ms; a snap: {summary['snap_ms_median']} ms")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        lines = ["| box | misfits, plain fit | misfits, checked fit | refitted | reported "
                 "| misfits, checked + snapped | reported, snapped |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {k} | {v['misfits_plain']} | {v['misfits_checked']} | {v['refitted']} | {v['reported']} "
                  f"| {v['misfits_snapped']} | {v['reported_snapped']} |" for k, v in rows.items()]
        (out / "table.md").write_text("\n".join(lines) + "\n")
    return summary


if __name__ == "__main__":
    main()
