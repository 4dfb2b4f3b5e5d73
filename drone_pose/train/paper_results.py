"""Published figures of the reproduction study (paper 000 in ../shared/papers), Tables 3-7, UAVA.

AD is in radians as printed there; ACC, ADD and Proj in percent; Table 7 in the units of its
columns. Used by `drone-pose reproduce` to print the measured tables next to the study's.
"""

from __future__ import annotations

COLUMNS = ("NPE", "AD", "ACC2", "ACC5", "ADD2", "ADD5", "Proj2", "Proj5")


def _row(*values: float) -> dict[str, float]:
    return dict(zip(COLUMNS, values, strict=True))


TABLES: dict[int, dict[str, object]] = {
    3: {
        "title": "Table 3: heatmap (l_h), mixture (l_m) and pose (l_p) losses, HRNet",
        "rows": {
            ("m2ed", "l_m"): _row(0.014, 0.027, 92.13, 98.07, 81.31, 93.34, 99.45, 99.58),
            ("m2ed", "l_p"): _row(0.012, 0.026, 95.20, 98.36, 90.29, 96.81, 98.05, 99.14),
            ("m2ed", "l_h"): _row(0.011, 0.020, 90.75, 98.04, 80.52, 91.37, 97.56, 99.49),
            ("tello", "l_m"): _row(0.071, 0.189, 43.38, 82.11, 14.88, 41.47, 93.97, 96.08),
            ("tello", "l_p"): _row(0.063, 0.223, 55.31, 85.34, 20.04, 50.53, 93.19, 94.49),
            ("tello", "l_h"): _row(0.091, 0.252, 36.36, 74.99, 18.27, 43.31, 89.25, 94.00),
        },
    },
    4: {
        "title": "Table 4: Hourglass, HRNet and HigherHRNet with l_h",
        "rows": {
            ("m2ed", "Hourglass"): _row(0.015, 0.028, 89.43, 96.94, 78.20, 90.42, 96.56, 99.02),
            ("m2ed", "HRNet"): _row(0.011, 0.020, 90.75, 98.04, 80.52, 91.37, 97.56, 99.49),
            ("m2ed", "HigherHRNet"): _row(0.011, 0.020, 89.92, 97.75, 79.58, 90.99, 97.50, 99.44),
            ("tello", "Hourglass"): _row(0.094, 0.214, 32.19, 75.47, 14.76, 38.26, 92.23, 96.25),
            ("tello", "HRNet"): _row(0.091, 0.252, 36.36, 74.99, 18.27, 43.31, 89.25, 94.00),
            ("tello", "HigherHRNet"): _row(0.095, 0.264, 42.98, 75.69, 20.19, 46.69, 89.54, 93.63),
        },
    },
    5: {
        "title": "Table 5: BPnP vs EPnP (l_h for 30 epochs, then l_m for 14)",
        "rows": {
            ("m2ed", "BPnP"): _row(0.014, 0.027, 92.13, 98.07, 81.31, 93.34, 99.45, 99.58),
            ("m2ed", "EPnP"): _row(0.014, 0.027, 92.89, 98.19, 80.50, 93.64, 99.52, 99.61),
            ("tello", "BPnP"): _row(0.071, 0.189, 43.38, 82.11, 14.88, 41.47, 93.97, 96.08),
            ("tello", "EPnP"): _row(0.074, 0.192, 46.77, 81.64, 21.07, 49.59, 93.77, 96.13),
        },
    },
    6: {
        "title": "Table 6: BPnP_faster vs BPnP with l_p",
        "rows": {
            ("m2ed", "BPnP_faster"): _row(0.013, 0.029, 94.79, 98.06, 89.38, 96.66, 97.83, 98.98),
            ("m2ed", "BPnP"): _row(0.012, 0.026, 95.20, 98.36, 90.29, 96.81, 98.05, 99.14),
            ("tello", "BPnP_faster"): _row(0.055, 0.167, 55.42, 87.03, 26.43, 58.99, 94.91, 96.12),
            ("tello", "BPnP"): _row(0.063, 0.223, 55.31, 85.34, 20.04, 50.53, 93.19, 94.49),
        },
    },
}

TIMING_COLUMNS = ("train_hours", "forward_s", "backward_s", "optimiser_step_s", "test_minutes")
TABLE_7: dict[tuple[str, str], dict[str, float]] = {
    ("m2ed", "BPnP_faster"): dict(zip(TIMING_COLUMNS, (6.80, 0.089, 0.53, 0.66, 17.15), strict=True)),
    ("m2ed", "BPnP"): dict(zip(TIMING_COLUMNS, (14.13, 0.13, 2.73, 2.90, 19.30), strict=True)),
    ("tello", "BPnP_faster"): dict(zip(TIMING_COLUMNS, (10.39, 0.09, 0.54, 0.69, 18.85), strict=True)),
    ("tello", "BPnP"): dict(zip(TIMING_COLUMNS, (20.38, 0.13, 2.68, 2.85, 19.95), strict=True)),
}
