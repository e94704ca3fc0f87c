"""Real-size source loading: sd21-base UNet (866M params). Run under the big-run lock:
flock /tmp/sdbuild-bigrun.lock python bench_sources_sd21_unet.py <mode> [folder]
mode synthetic: resolve + load_submodel of the synthetic UNet;
mode save: write_synthetic_snapshot("sd21-base") to <folder> (then no UNet load);
mode local: resolve + load_submodel of <folder> (from_pretrained path)."""
import json, resource, sys, time
from pathlib import Path
from types import SimpleNamespace

def rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

t0 = time.perf_counter()
from sdbuild.sources import load_submodel, resolve_source, write_synthetic_snapshot
import_s = time.perf_counter() - t0
mode = sys.argv[1]
if mode == "save":
    t = time.perf_counter()
    write_synthetic_snapshot("sd21-base", 0, Path(sys.argv[2]))
    print(json.dumps({"mode": mode, "write_s": round(time.perf_counter() - t, 1), "peak_rss_gb": round(rss_gb(), 2)}))
    sys.exit()
baseline = rss_gb()
t = time.perf_counter()
if mode == "synthetic":
    source = resolve_source(SimpleNamespace(source="synthetic", architecture="sd21-base", seed=0))
else:
    source = resolve_source(SimpleNamespace(source="local", path=sys.argv[2], allow_pickle=False))
resolve_s = time.perf_counter() - t
t = time.perf_counter()
unet = load_submodel(source, "unet")
load_s = time.perf_counter() - t
params = sum(p.numel() for p in unet.parameters())
report = {"mode": mode, "import_s": round(import_s, 1), "resolve_s": round(resolve_s, 2),
          "load_s": round(load_s, 1), "params": params, "peak_rss_gb_before_load": round(baseline, 2),
          "peak_rss_gb": round(rss_gb(), 2), "weights_gb": round(params * 4 / 1e9, 2)}
print(json.dumps(report))
