"""precision best's latency race, run twice back to back on one graph (issue 26 item 2).

The resnet18-shaped graph (``bench/calibration_speed.py``'s), calibrated with the default
params on 64 images, then ``select_engine`` on a ``best`` target twice, the second run
given the first's winner as the previous production choice. Each run's verdict (decided,
tied or too noisy), rounds, seconds, pruned candidates and paired comparisons go to
``bench/results/selection_race.json`` with the load average. What to look for: whether
the runs agree, and whether a noisy run says so instead of deciding.

    python bench/selection_race.py [resnet18|efficientnet_b0|mobilenet_v3_large|minilm]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    import calibration_speed as cs

    from trtflow.params import CalibrationConfig, Target
    from trtflow.quant.artifact import Calibration
    from trtflow.stages.calibrate import calibrate
    from trtflow.stages.select import select_engine

    model = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
    clean = cs.prepare(model)
    feeds = cs.samples_for(model, 64)
    runs: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cal = Path(tmp) / "calibration"
        cal.mkdir()
        calibrate(clean, iter(feeds), CalibrationConfig(), cs.threads(), cal,
                  metric="cosine", selection=iter(feeds))
        selection = {k: v[:8] for k, v in feeds[0].items()}
        previous = None
        for run in (1, 2):
            engine = Path(tmp) / f"engine{run}"
            engine.mkdir()
            start = time.perf_counter()
            report = select_engine(clean, Target(precision="best"), engine, Calibration(cal),
                                   selection, "cosine", 0.99, cs.threads(), previous=previous,
                                   progress=print)
            chosen = report["selection"]
            runs[f"run{run}"] = {
                "seconds": time.perf_counter() - start, "previous": previous,
                "winner": chosen["winner"], "decided": chosen["decided"], "why": chosen["why"],
                "race": chosen["race"], "loadavg_after": os.getloadavg()}
            print(json.dumps(runs[f"run{run}"], indent=1), flush=True)
            previous = chosen["winner"]
    out = ROOT / "bench" / "results" / "selection_race.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[model] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "host": cs.cpu_info(), "runs": runs}
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
