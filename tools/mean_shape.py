"""Derive the canonical 68-point face shape used by masktheface.canonical.

Run once (python tools/mean_shape.py ../shared/data/lfw/lfw-deepfunneled); it prints the
array that is pasted into masktheface/canonical.py.  Each detected shape is aligned to
the running mean by a similarity transform (Procrustes), averaged, then placed in the
canonical frame: jaw points 0 and 16 at x=100 and x=900, their midpoint at y=400.
"""
import glob
import importlib.util
import os
import sys

import cv2
import dlib
import numpy as np

root = sys.argv[1]
files = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[::6][:1500]
models = os.path.join(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0], "models")
det = dlib.get_frontal_face_detector()
sp = dlib.shape_predictor(os.path.join(models, "shape_predictor_68_face_landmarks.dat"))
shapes = []
for f in files:
    g = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
    r = det(g, 0)
    if len(r) != 1:
        continue
    s = sp(g, r[0])
    shapes.append(np.array([(p.x, p.y) for p in s.parts()], np.float64))
S = np.stack(shapes)

def norm(p):
    p = p - p.mean(0)
    return p / np.sqrt((p ** 2).sum(1).mean())

def align(src, dst):
    # similarity Procrustes of src onto dst (both centred, unit scale)
    u, _, vt = np.linalg.svd(src.T @ dst)
    r = u @ vt
    return src @ r

S = np.stack([norm(s) for s in S])
mean = S[0]
for _ in range(5):
    A = np.stack([align(s, mean) for s in S])
    mean = norm(A.mean(0))
# put in the canonical frame: rotate so jaw 0->16 is horizontal
v = mean[16] - mean[0]
ang = np.arctan2(v[1], v[0])
c, s_ = np.cos(-ang), np.sin(-ang)
mean = mean @ np.array([[c, s_], [-s_, c]])
scale = 800.0 / np.linalg.norm(mean[16] - mean[0])
mean = mean * scale
mid = (mean[0] + mean[16]) / 2
mean = mean - mid + np.array([500.0, 400.0])
print(len(S), "shapes")
print("CANONICAL_68 = np.array([")
for i in range(0, 68, 4):
    print("    " + " ".join(f"[{x:.1f}, {y:.1f}]," for x, y in mean[i:i+4]))
print("], dtype=np.float32)")
