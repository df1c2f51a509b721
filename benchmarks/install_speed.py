"""`make install` with pip against the package with uv (its imports compiled), side by side.

Each round builds two fresh virtual environments in turn, as the Makefile would: torch with pip
first (pip reads the machine's wheel folders and constraints, uv does not), then the package and
its test extras, either with pip (`pip install -e '.[test]'`, today's Makefile) or with
`uv pip install --compile-bytecode`, which writes the bytecode pip writes (without it, on a
machine that sets PYTHONDONTWRITEBYTECODE=1, every process compiles its imports from source:
docs/benchmarks.md, stop 33). For each it prints the install's wall seconds and the median of 3
cold imports of what a stage job and a test worker import (`forgetlab.zygote`, mlflow, pandas,
snakemake's API), and the ratio uv / pip of both.

    python benchmarks/install_speed.py [--rounds 2]

Figures to benchmarks/results/install_speed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTS = "import forgetlab.zygote, forgetlab.cli, mlflow, pandas, snakemake.api"
PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]


def installs(variant: str, python: Path) -> list[list[str]]:
    if variant == "pip":
        return [[str(python), *PIP, "torch==2.13.0"], [str(python), *PIP, "-e", ".[test]"]]
    uv = python.parent / "uv"
    return [[str(python), *PIP, "torch==2.13.0", "uv>=0.5"],
            [str(uv), "pip", "install", "-q", "--compile-bytecode", "--python", str(python), "-e", ".[test]"]]


def one(variant: str, root: Path) -> dict:
    venv = root / f"venv-{variant}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    for cmd in installs(variant, python):
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    install_s = time.perf_counter() - start
    imports = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([str(python), "-c", IMPORTS], cwd=root, check=True)
        imports.append(time.perf_counter() - t)
    versions = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                              text=True, check=True).stdout.split()
    shutil.rmtree(venv)
    return {"install_s": round(install_s, 1), "import_s": round(statistics.median(imports), 2),
            "packages": len(versions), "freeze": versions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            row = {v: one(v, Path(tmp)) for v in ("pip", "uv")}
            print(f"round {r}: " + ", ".join(f"{v} install {row[v]['install_s']} s, import {row[v]['import_s']} s"
                                              for v in row), flush=True)
            rounds.append(row)
    med = {v: {k: statistics.median(r[v][k] for r in rounds) for k in ("install_s", "import_s")} for v in ("pip", "uv")}
    pip_set, uv_set = set(rounds[-1]["pip"]["freeze"]), set(rounds[-1]["uv"]["freeze"])
    out = {
        "date": datetime.date.today().isoformat(),
        "rounds": [{v: {k: x for k, x in row[v].items() if k != "freeze"} for v in row} for row in rounds],
        "median": med,
        "uv_over_pip": {k: round(med["uv"][k] / med["pip"][k], 3) for k in ("install_s", "import_s")},
        "only_pip": sorted(pip_set - uv_set), "only_uv": sorted(uv_set - pip_set),
    }
    print(json.dumps({k: out[k] for k in ("median", "uv_over_pip", "only_pip", "only_uv")}, indent=1))
    path = REPO / "benchmarks" / "results" / "install_speed.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
